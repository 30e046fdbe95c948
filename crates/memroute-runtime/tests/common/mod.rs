//! Helpers shared by the backend integration tests.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use memroute_proto::{Decoded, Limits, Request, RequestDecoder};
use tokio::task::LocalSet;

/// Decodes exactly one request from its wire form.
pub fn req(wire: impl AsRef<[u8]>) -> Request {
    let mut buf = BytesMut::from(wire.as_ref());
    match RequestDecoder::new(Limits::default()).decode(&mut buf) {
        Some(Decoded::Request(r)) => {
            assert!(buf.is_empty(), "one request per call");
            r
        }
        other => panic!("bad test request: {other:?}"),
    }
}

/// Runs `f` on a current-thread runtime inside a LocalSet, as a worker
/// does, with an overall time bound.
pub fn run<F: Future<Output = ()>>(limit: Duration, f: F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    LocalSet::new().block_on(&rt, async move {
        tokio::time::timeout(limit, f)
            .await
            .expect("test took too long");
    });
}
