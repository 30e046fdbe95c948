//! Regression tests for backend replies that used to panic the framer
//! (found by the `decode_response` fuzz target). A backend can send any
//! bytes; the proxy must get `Err(MalformedResponse)`, never a panic.

use bytes::BytesMut;
use memroute_proto::{Decoded, Limits, Request, RequestDecoder, ResponseDecoder};

fn request(wire: &[u8]) -> Request {
    let mut buf = BytesMut::from(wire);
    match RequestDecoder::new(Limits::default()).decode(&mut buf) {
        Some(Decoded::Request(r)) => r,
        other => panic!("{other:?}"),
    }
}

fn frame(req: &[u8], reply: &[u8]) -> Result<bool, memroute_proto::response::MalformedResponse> {
    let decoder = ResponseDecoder::for_request(&request(req));
    decoder
        .decode(&mut BytesMut::from(reply))
        .map(|r| r.is_some())
}

/// `VA` with no size used to slice `line[3..]` of a 2-byte line.
#[test]
fn bare_va_line_is_malformed() {
    assert!(frame(b"mg a v\r\n", b"VA\r\n").is_err());
    assert!(frame(b"ma a v\r\n", b"VA\n").is_err());
    assert!(frame(b"mg a v\r\n", b"VA \r\n").is_err());
}

/// A size near `u64::MAX` used to overflow `start + size + 2` (a panic with
/// overflow checks, an out-of-bounds slice without).
#[test]
fn huge_value_sizes_are_malformed() {
    for size in [
        "18446744073709551615",
        "18446744073709551614",
        "18446744073709551600",
    ] {
        let va = format!("VA {size}\r\n\r\n\r\n");
        assert!(frame(b"mg a v\r\n", va.as_bytes()).is_err(), "VA {size}");
        let value = format!("VALUE a 0 {size}\r\n\r\n\r\nEND\r\n");
        assert!(
            frame(b"get a\r\n", value.as_bytes()).is_err(),
            "VALUE {size}"
        );
    }
}

/// Large but representable sizes are simply incomplete.
#[test]
fn large_value_sizes_wait_for_data() {
    assert_eq!(frame(b"mg a v\r\n", b"VA 4294967296\r\nab"), Ok(false));
    assert_eq!(
        frame(b"get a\r\n", b"VALUE a 0 4294967296\r\nab"),
        Ok(false)
    );
}
