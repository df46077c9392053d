//! Hostile input found in review: length fields a client controls must not make the
//! server buffer or allocate without bound.

mod common;

use std::time::Duration;

use common::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Zero-length fragments that never end a record carry no payload, so a bound on the
/// payload alone never trips: the server must still refuse to buffer them forever.
#[tokio::test]
async fn endless_empty_fragments_close_the_connection() {
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
