//! Fuzzes the typed reading of a relayed reply (`Reply::parse`), which
//! route handlers use to read what a backend answered (warm-up and L1/L2
//! copies, binary encoding of routed replies).
//!
//! Invariants:
//! - no panic, whatever the bytes (sizes past the data, huge numbers,
//!   missing tokens);
//! - a hit's value is a slice of the input (never longer than it);
//! - encoding the parsed reply back for a `get` and a meta `mg` request
//!   does not panic either.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use memroute_proto::{Limits, Reply, Request};

fuzz_target!(|data: &[u8]| {
    let raw = Bytes::copy_from_slice(data);
    let reply = Reply::parse(&raw);
    assert!(reply.value.len() <= raw.len());
    let limits = Limits::default();
    for line in [&b"get k"[..], b"mg k v f t c k O123", b"gets k"] {
        let request = Request::parse(line, b"", &limits).expect("a fixed valid request");
        let mut out = BytesMut::new();
        reply.encode(&request, &mut out);
        let _ = reply.to_response(&request);
    }
});
