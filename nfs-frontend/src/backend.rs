//! The one seam between the NFSv3 wire and whatever executes file operations.
//!
//! Every NFSv3 procedure becomes exactly one `FsOp`, executed atomically by the backend,
//! and exactly one `FsReply` comes back (DESIGN.md, "The file state machine"). The
//! adapter never asks the backend a second question to fill in WCC data or attributes:
//! in replicated mode each question would be another ordered BFT request, and two
//! requests would not be atomic. Two backends implement this trait: the unreplicated one
//! (`crate::unreplicated`, one local `FileStateMachine`) and the BFT client of the
//! replicated mode, which orders the op across replicas and returns the reply that f+1
//! of them agree on.

use std::future::Future;
use std::sync::Arc;

use fs_state::{AuthUnix, FailAttrs, FileHandle, FsOp, FsReply, NfsStat3, WccData};

/// Executes file operations for the NFS adapter.
///
/// `execute` must return the reply of exactly this operation, executed once, after it is
/// durable as far as the reply claims (a WRITE answered `FILE_SYNC`, a CREATE, ...).
/// A backend that cannot execute (a local fault, shutdown) answers with an NFS error,
/// for example `error_reply(&op, NfsStat3::Io)`: the wire has no other way to say it.
pub trait FsBackend: Send + Sync + 'static {
    /// The handle of the export's root, returned by MOUNT. Must be the same on every
    /// replica and across restarts (`FileHandle::root(generation)`).
    fn root_handle(&self) -> FileHandle;

    /// Execute one operation on behalf of the AUTH_UNIX caller `cred`.
    fn execute(&self, cred: AuthUnix, op: FsOp) -> impl Future<Output = FsReply> + Send;
}

impl<B: FsBackend> FsBackend for Arc<B> {
    fn root_handle(&self) -> FileHandle {
        (**self).root_handle()
    }

    fn execute(&self, cred: AuthUnix, op: FsOp) -> impl Future<Output = FsReply> + Send {
        (**self).execute(cred, op)
    }
}

/// A failure reply for `op` carrying `status` and the empty `resfail` arm RFC 1813 has
/// for that procedure (no attributes: the backend could not produce any).
pub fn error_reply(op: &FsOp, status: NfsStat3) -> FsReply {
    let attrs = match op {
        FsOp::Getattr { .. } => FailAttrs::None,
        FsOp::Lookup { .. }
        | FsOp::Access { .. }
        | FsOp::Readlink { .. }
        | FsOp::Read { .. }
        | FsOp::Readdir { .. }
        | FsOp::Readdirplus { .. }
        | FsOp::Fsstat { .. }
        | FsOp::Fsinfo { .. }
        | FsOp::Pathconf { .. } => FailAttrs::PostOp(None),
        FsOp::Setattr { .. }
        | FsOp::Write { .. }
        | FsOp::Create { .. }
        | FsOp::Mkdir { .. }
        | FsOp::Symlink { .. }
        | FsOp::Mknod { .. }
        | FsOp::Remove { .. }
        | FsOp::Rmdir { .. }
        | FsOp::Commit { .. } => FailAttrs::Wcc(WccData::default()),
        FsOp::Rename { .. } => FailAttrs::Rename {
            fromdir_wcc: WccData::default(),
            todir_wcc: WccData::default(),
        },
        FsOp::Link { .. } => FailAttrs::Link {
            file_attributes: None,
            linkdir_wcc: WccData::default(),
        },
    };
    FsReply::fail(status, attrs)
}
