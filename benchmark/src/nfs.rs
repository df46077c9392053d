//! A small NFSv3 client on nfs3_client for the macro-benchmark: the calls a shell tool
//! (`mkdir -p`, `cp -r`, `rm -r`, `ls -lR`, `cat`) would make, one at a time, each turned
//! into an `anyhow` error naming the procedure when the server refuses it.
//!
//! nfs3_client defaults to AUTH_NULL and a privileged source port (notes/nfs.md): the
//! connection comes from `nfs_mount::connect_export`, which overrides both, sets
//! TCP_NODELAY so that no call waits on Nagle, and makes a closed socket an error
//! (nfs3_client's own stream spins on it, where no timeout can fire).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nfs3_client::RpcError;
use nfs3_client::nfs3_types::nfs3::{
    COMMIT3args, CREATE3args, FSINFO3args, GETATTR3args, LOOKUP3args, MKDIR3args, Nfs3Option,
    Nfs3Result, READ3args, READDIRPLUS3args, REMOVE3args, RMDIR3args, WRITE3args, cookieverf3,
    createhow3, diropargs3, fattr3, filename3, ftype3, nfs_fh3, sattr3, stable_how,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use crate::cpu::Usage;

/// Bytes asked for per READ and sent per WRITE (the embedded server's `rtpref`).
const TRANSFER_BYTES: usize = 64 * 1024;
/// READDIRPLUS sizes: enough for the benchmark's directories in one call.
const READDIR_DIRCOUNT: u32 = 8 * 1024;
const READDIR_MAXCOUNT: u32 = 64 * 1024;
/// A directory listing longer than this is not the benchmark's tree: stop paging.
const READDIR_PAGES_MAX: usize = 1024;

/// Where an NFSv3 server listens (NFS and MOUNT on one port) and which export to mount.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub export: String,
}

/// The caller's AUTH_UNIX identity.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// One directory entry as READDIRPLUS (or a LOOKUP/GETATTR fallback) gives it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Vec<u8>,
    pub fh: nfs_fh3,
    pub is_dir: bool,
}

pub struct Client {
    conn: nfs_mount::Conn,
    /// The latency of every call made in a timed part (`CallTimes::start_timing`).
    pub calls: CallTimes,
}

/// The latency of each NFS call, by procedure, between `start_timing` and `stop_timing`,
/// and what those timed parts cost this process: the workload records the timed part
/// of each timed run only.
#[derive(Debug, Default)]
pub struct CallTimes {
    /// Recording since this usage reading.
    recording: Option<Usage>,
    pub by_procedure: BTreeMap<&'static str, Vec<Duration>>,
    /// CPU and context switches of the whole process during the recorded parts (with
    /// an embedded server or cluster, its work too).
    pub used: Usage,
    /// The recorded parts' length, together.
    pub recorded: Duration,
}

impl CallTimes {
    /// Starts the timed part of a run: its clock, and each call's latency and the
    /// process's usage if `record`.
    pub fn start_timing(&mut self, record: bool) -> Instant {
        self.recording = record.then(Usage::now);
        Instant::now()
    }

    /// Ends the timed part that began at `start`: its length; calls are recorded no more.
    pub fn stop_timing(&mut self, start: Instant) -> Duration {
        let elapsed = start.elapsed();
        if let Some(from) = self.recording.take() {
            self.used.add(&Usage::now().since(&from));
            self.recorded += elapsed;
        }
        elapsed
    }

    fn note(&mut self, procedure: &'static str, start: Instant) {
        if self.recording.is_some() {
            let elapsed = start.elapsed();
            self.by_procedure
                .entry(procedure)
                .or_default()
                .push(elapsed);
        }
    }
}

/// One NFS call through `self.conn`, timed into `self.calls` and turned into a `Result`
/// that names the procedure.
macro_rules! call {
    ($client:ident, $procedure:literal, $method:ident($args:expr)) => {{
        let start = Instant::now();
        let reply = $client.conn.$method($args).await;
        $client.calls.note($procedure, start);
        nfs_ok($procedure, reply)
    }};
}

fn nfs_ok<T, E: Debug>(procedure: &str, r: Result<Nfs3Result<T, E>, RpcError>) -> Result<T> {
    match r {
        Ok(Nfs3Result::Ok(v)) => Ok(v),
        Ok(Nfs3Result::Err((status, _))) => bail!("{procedure}: {status:?}"),
        Err(e) => Err(anyhow::Error::new(e).context(format!("{procedure}: RPC failed"))),
    }
}

fn dirop<'a>(dir: &nfs_fh3, name: &'a [u8]) -> diropargs3<'a> {
    diropargs3 {
        dir: dir.clone(),
        name: filename3(Opaque::borrowed(name)),
    }
}

fn handle(procedure: &str, fh: Nfs3Option<nfs_fh3>) -> Result<nfs_fh3> {
    match fh {
        Nfs3Option::Some(fh) => Ok(fh),
        Nfs3Option::None => bail!("{procedure}: the reply carries no file handle"),
    }
}

impl Client {
    pub async fn connect(endpoint: &Endpoint, identity: Identity) -> Result<Client> {
        let conn = nfs_mount::connect_export(
            endpoint.addr,
            &endpoint.export,
            identity.uid,
            identity.gid,
            "bftnfs-bench",
        )
        .await
        .with_context(|| {
            format!(
                "mounting {}:{} (NFSv3 over TCP)",
                endpoint.addr, endpoint.export
            )
        })?;
        Ok(Client {
            conn,
            calls: CallTimes::default(),
        })
    }

    pub fn root(&self) -> nfs_fh3 {
        self.conn.root_nfs_fh3()
    }

    pub async fn null(&mut self) -> Result<()> {
        self.conn.null().await.context("NULL")
    }

    pub async fn mkdir(&mut self, dir: &nfs_fh3, name: &[u8]) -> Result<nfs_fh3> {
        let args = MKDIR3args {
            where_: dirop(dir, name),
            attributes: sattr3 {
                mode: Nfs3Option::Some(0o755),
                ..sattr3::default()
            },
        };
        let ok = call!(self, "MKDIR", mkdir(&args))?;
        handle("MKDIR", ok.obj)
    }

    pub async fn create(&mut self, dir: &nfs_fh3, name: &[u8]) -> Result<nfs_fh3> {
        let args = CREATE3args {
            where_: dirop(dir, name),
            how: createhow3::UNCHECKED(sattr3 {
                mode: Nfs3Option::Some(0o644),
                ..sattr3::default()
            }),
        };
        let ok = call!(self, "CREATE", create(&args))?;
        handle("CREATE", ok.obj)
    }

    /// WRITE `data` at `offset` (one call), returning how stably the server committed it.
    pub async fn write(
        &mut self,
        fh: &nfs_fh3,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> Result<stable_how> {
        let args = WRITE3args {
            file: fh.clone(),
            offset,
            count: u32::try_from(data.len()).context("WRITE larger than 4 GiB")?,
            stable,
            data: Opaque::borrowed(data),
        };
        let ok = call!(self, "WRITE", write(&args))?;
        if ok.count as usize != data.len() {
            bail!("WRITE: short write ({} of {} bytes)", ok.count, data.len());
        }
        Ok(ok.committed)
    }

    pub async fn commit(&mut self, fh: &nfs_fh3) -> Result<()> {
        let args = COMMIT3args {
            file: fh.clone(),
            offset: 0,
            count: 0,
        };
        call!(self, "COMMIT", commit(&args)).map(|_| ())
    }

    /// What `cp` does for one file: CREATE, UNSTABLE WRITEs, and COMMIT unless every
    /// WRITE reply already said FILE_SYNC. Returns whether a COMMIT was sent.
    pub async fn write_file(&mut self, dir: &nfs_fh3, name: &[u8], data: &[u8]) -> Result<bool> {
        let fh = self.create(dir, name).await?;
        let mut all_synced = true;
        for (i, chunk) in data.chunks(TRANSFER_BYTES).enumerate() {
            let offset = (i * TRANSFER_BYTES) as u64;
            let committed = self.write(&fh, offset, chunk, stable_how::UNSTABLE).await?;
            all_synced &= committed == stable_how::FILE_SYNC;
        }
        if !all_synced {
            self.commit(&fh).await?;
        }
        Ok(!all_synced)
    }

    /// FSINFO's preferred WRITE and READ sizes (at least 4 KiB each).
    pub async fn transfer_sizes(&mut self) -> Result<(usize, usize)> {
        let args = FSINFO3args {
            fsroot: self.root(),
        };
        let ok = call!(self, "FSINFO", fsinfo(&args))?;
        Ok((
            (ok.wtpref as usize).max(4096),
            (ok.rtpref as usize).max(4096),
        ))
    }

    /// Writes `data` from offset 0 in UNSTABLE WRITEs of at most `size` bytes, one at a
    /// time, taking short writes as any client does, then COMMIT unless every reply said
    /// FILE_SYNC. Returns the WRITEs sent.
    pub async fn write_sequential(
        &mut self,
        fh: &nfs_fh3,
        data: &[u8],
        size: usize,
    ) -> Result<u64> {
        let (mut offset, mut writes, mut all_synced) = (0usize, 0u64, true);
        while offset < data.len() {
            let chunk = &data[offset..data.len().min(offset + size)];
            let args = WRITE3args {
                file: fh.clone(),
                offset: offset as u64,
                count: chunk.len() as u32,
                stable: stable_how::UNSTABLE,
                data: Opaque::borrowed(chunk),
            };
            let ok = call!(self, "WRITE", write(&args))?;
            if ok.count == 0 || ok.count as usize > chunk.len() {
                bail!("WRITE: {} of {} bytes at {offset}", ok.count, chunk.len());
            }
            all_synced &= ok.committed == stable_how::FILE_SYNC;
            offset += ok.count as usize;
            writes += 1;
        }
        if !all_synced {
            self.commit(fh).await?;
        }
        Ok(writes)
    }

    /// Reads the file from offset 0 in READs of `size` bytes until EOF and checks that
    /// it holds exactly `expected`.
    pub async fn read_and_compare(
        &mut self,
        fh: &nfs_fh3,
        expected: &[u8],
        size: usize,
    ) -> Result<()> {
        let mut offset = 0usize;
        loop {
            let args = READ3args {
                file: fh.clone(),
                offset: offset as u64,
                count: size as u32,
            };
            let ok = call!(self, "READ", read(&args))?;
            let data = ok.data.as_ref();
            if expected.get(offset..offset + data.len()) != Some(data) {
                bail!(
                    "READ: {} bytes at {offset} differ from what was written",
                    data.len()
                );
            }
            offset += data.len();
            if ok.eof {
                break;
            }
            if data.is_empty() {
                bail!("READ: no data and no EOF at offset {offset}");
            }
        }
        if offset != expected.len() {
            bail!("READ: {offset} bytes to EOF, {} written", expected.len());
        }
        Ok(())
    }

    pub async fn lookup(&mut self, dir: &nfs_fh3, name: &[u8]) -> Result<nfs_fh3> {
        let args = LOOKUP3args {
            what: dirop(dir, name),
        };
        call!(self, "LOOKUP", lookup(&args)).map(|ok| ok.object)
    }

    pub async fn getattr(&mut self, fh: &nfs_fh3) -> Result<fattr3> {
        let args = GETATTR3args { object: fh.clone() };
        call!(self, "GETATTR", getattr(&args)).map(|ok| ok.obj_attributes)
    }

    /// READ from offset 0 until EOF; returns the number of bytes read.
    pub async fn read_all(&mut self, fh: &nfs_fh3) -> Result<u64> {
        let mut offset = 0u64;
        loop {
            let args = READ3args {
                file: fh.clone(),
                offset,
                count: TRANSFER_BYTES as u32,
            };
            let ok = call!(self, "READ", read(&args))?;
            offset += u64::from(ok.count);
            if ok.eof {
                return Ok(offset);
            }
            if ok.count == 0 {
                bail!("READ: no data and no EOF at offset {offset}");
            }
        }
    }

    /// Every entry of `dir` except `.` and `..`, by READDIRPLUS (with LOOKUP or GETATTR
    /// for an entry whose handle or attributes the server left out).
    pub async fn readdirplus(&mut self, dir: &nfs_fh3) -> Result<Vec<Entry>> {
        let mut entries = Vec::new();
        let mut cookie = 0;
        let mut cookieverf = cookieverf3::default();
        for _ in 0..READDIR_PAGES_MAX {
            let args = READDIRPLUS3args {
                dir: dir.clone(),
                cookie,
                cookieverf,
                dircount: READDIR_DIRCOUNT,
                maxcount: READDIR_MAXCOUNT,
            };
            let ok = call!(self, "READDIRPLUS", readdirplus(&args))?;
            cookieverf = ok.cookieverf;
            for e in ok.reply.entries.0 {
                cookie = e.cookie;
                let name = e.name.0.to_vec();
                if name == b"." || name == b".." {
                    continue;
                }
                let fh = match e.name_handle {
                    Nfs3Option::Some(fh) => fh,
                    Nfs3Option::None => self.lookup(dir, &name).await?,
                };
                let is_dir = match e.name_attributes {
                    Nfs3Option::Some(attr) => attr.type_ == ftype3::NF3DIR,
                    Nfs3Option::None => self.getattr(&fh).await?.type_ == ftype3::NF3DIR,
                };
                entries.push(Entry { name, fh, is_dir });
            }
            if ok.reply.eof {
                return Ok(entries);
            }
        }
        bail!("READDIRPLUS: more than {READDIR_PAGES_MAX} pages")
    }

    pub async fn remove(&mut self, dir: &nfs_fh3, name: &[u8]) -> Result<()> {
        let args = REMOVE3args {
            object: dirop(dir, name),
        };
        call!(self, "REMOVE", remove(&args)).map(|_| ())
    }

    pub async fn rmdir(&mut self, dir: &nfs_fh3, name: &[u8]) -> Result<()> {
        let args = RMDIR3args {
            object: dirop(dir, name),
        };
        call!(self, "RMDIR", rmdir(&args)).map(|_| ())
    }

    /// `rm -r parent/name`: LOOKUP, then depth first READDIRPLUS, REMOVE and RMDIR.
    pub async fn remove_tree(&mut self, parent: &nfs_fh3, name: &[u8]) -> Result<()> {
        let fh = self.lookup(parent, name).await?;
        self.remove_contents(&fh).await?;
        self.rmdir(parent, name).await
    }

    fn remove_contents<'a>(
        &'a mut self,
        dir: &'a nfs_fh3,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>> {
        Box::pin(async move {
            for entry in self.readdirplus(dir).await? {
                if entry.is_dir {
                    self.remove_contents(&entry.fh).await?;
                    self.rmdir(dir, &entry.name).await?;
                } else {
                    self.remove(dir, &entry.name).await?;
                }
            }
            Ok(())
        })
    }

    /// `ls -lR`: READDIRPLUS of each directory and GETATTR of every entry, depth first.
    /// Returns the number of objects examined.
    pub fn stat_tree<'a>(
        &'a mut self,
        dir: &'a nfs_fh3,
    ) -> Pin<Box<dyn Future<Output = Result<usize>> + 'a>> {
        Box::pin(async move {
            let mut examined = 0;
            for entry in self.readdirplus(dir).await? {
                self.getattr(&entry.fh).await?;
                examined += 1;
                if entry.is_dir {
                    examined += self.stat_tree(&entry.fh).await?;
                }
            }
            Ok(examined)
        })
    }
}
