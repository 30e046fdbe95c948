//! The request decoder's invariants, shared by the `decode_request` and
//! `decode_meta` targets (see decode_request.rs for what they are).

use bytes::BytesMut;
use memroute_proto::{Decoded, Limits, ProtocolError, RequestDecoder, ResponseDecoder};

pub fn limits(tight: bool) -> Limits {
    if tight {
        Limits {
            max_key_len: 16,
            max_item_size: 256,
            max_line_len: 64,
            max_get_line_len: 128,
            max_keys_per_get: 4,
            allow_control_chars_in_keys: false,
        }
    } else {
        Limits::default()
    }
}

/// Decodes everything available; returns true on `Close`.
fn drain(decoder: &mut RequestDecoder, buf: &mut BytesMut, out: &mut Vec<Decoded>) -> bool {
    loop {
        let before = buf.len();
        match decoder.decode(buf) {
            None => return false,
            // `Close` may follow bytes swallowed in the same call; it ends
            // the stream either way.
            Some(Decoded::Error(ProtocolError::Close)) => return true,
            Some(d) => {
                assert!(buf.len() < before, "no progress: {d:?}");
                out.push(d);
            }
        }
    }
}

fn check_request(d: &Decoded, limits: &Limits) {
    let Decoded::Request(r) = d else { return };
    // Accessors must not panic.
    let _ = (r.noreply(), r.key(), r.command().name(), r.has_data_block());
    let _ = ResponseDecoder::for_request(r);
    let mut wire = BytesMut::new();
    r.encode(&mut wire);
    let mut decoder = RequestDecoder::new(limits.clone());
    match decoder.decode(&mut wire) {
        Some(Decoded::Request(again)) => assert_eq!(&again, r, "re-decoded request differs"),
        other => panic!("re-encoded {r:?} decoded to {other:?}"),
    }
    assert!(wire.is_empty(), "re-encoded request left bytes behind");
    assert!(!decoder.is_mid_request());
}

/// Runs the invariants on one client byte stream; `selector` picks the
/// chunk size (`& 0x7f`, 0 = all at once) and, with bit 7, tight limits.
pub fn check_stream(selector: u8, input: &[u8]) {
    let limits = limits(selector & 0x80 != 0);
    let chunk = match selector & 0x7f {
        0 => input.len().max(1),
        n => usize::from(n),
    };

    let mut decoder = RequestDecoder::new(limits.clone());
    let mut buf = BytesMut::new();
    let mut chunked = Vec::new();
    let mut closed = false;
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        if drain(&mut decoder, &mut buf, &mut chunked) {
            closed = true;
            break;
        }
    }
    for d in &chunked {
        check_request(d, &limits);
    }

    let mut decoder = RequestDecoder::new(limits.clone());
    let mut buf = BytesMut::from(input);
    let mut whole = Vec::new();
    let whole_closed = drain(&mut decoder, &mut buf, &mut whole);
    assert!(
        whole.starts_with(&chunked),
        "chunked output is not a prefix of the whole output"
    );
    if !closed {
        assert_eq!(whole, chunked, "chunking changed the output");
        assert!(!whole_closed, "only the all-at-once run closed");
    }
}
