//! Hostile input found in review: length fields a client controls must not make the
//! server buffer or allocate without bound.
//!
//! The binary counts the largest single allocation of the process (the server runs on
//! its own thread in this process), so a decoder that sizes a buffer from a wire length
//! before checking it is caught even where the kernel would lazily back the allocation.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestServer, be, call, reply, root_cred, word};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct MaxAlloc;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for MaxAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: MaxAlloc = MaxAlloc;

/// Tests in this binary measure the process-wide allocator: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The 16-byte root handle as `nfs_fh3`.
fn root_fh() -> Vec<u8> {
    let mut v = be(&[16]);
    v.extend(fs_state::FileHandle::root(1).as_bytes());
    v
}

/// Opaque length fields of the arguments (handles, names, WRITE data, symlink targets,
/// MOUNT paths) claiming ~4 GiB with no bytes behind them: GARBAGE_ARGS, and nothing
/// near that size is allocated on the way.
#[tokio::test]
async fn forged_opaque_lengths_in_arguments_allocate_nothing_large() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start();
    let mut s = TcpStream::connect(server.addr()).await.expect("connect");
    let huge = 0xffff_fff0u32;
    let cases: Vec<(&str, u32, u32, u32, Vec<u8>)> = vec![
        ("GETATTR handle", 100_003, 3, 1, be(&[huge])),
        ("LOOKUP name", 100_003, 3, 3, {
            let mut a = root_fh();
            a.extend(be(&[huge]));
            a
        }),
        ("WRITE data", 100_003, 3, 7, {
            let mut a = root_fh();
            a.extend(be(&[0, 0, 16, 2, huge]));
            a
        }),
        ("MKNOD name", 100_003, 3, 11, {
            let mut a = root_fh();
            a.extend(be(&[huge]));
            a
        }),
        ("MNT path", 100_005, 3, 1, be(&[huge])),
    ];
    for (xid, (what, prog, vers, proc, args)) in cases.into_iter().enumerate() {
        LARGEST.store(0, Ordering::Relaxed);
        s.write_all(&call(xid as u32, prog, vers, proc, &root_cred(), &args))
            .await
            .expect("send");
        let r = reply(&mut s).await.expect("reply");
        assert_eq!((word(&r, 2), word(&r, 5)), (0, 4), "{what}: GARBAGE_ARGS");
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(
            largest < 64 << 20,
            "{what}: a forged length made the server allocate {largest} bytes at once"
        );
    }
}

/// Zero-length fragments that never end a record carry no payload, so a bound on the
/// payload alone never trips: the server must still refuse to buffer them forever.
#[tokio::test]
async fn endless_empty_fragments_close_the_connection() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start();
    let mut s = TcpStream::connect(server.addr()).await.expect("connect");
    // 2 x RECORD_BYTES_MAX of fragment headers, each "0 bytes follow, not the last".
    let junk = vec![0u8; 8 << 20];
    // The server may close while we write: that is the expected outcome.
    let _ = tokio::time::timeout(Duration::from_secs(10), s.write_all(&junk)).await;
    let mut b = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the server keeps buffering empty fragments instead of closing: {closed:?}"
    );
}
