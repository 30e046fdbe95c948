//! Fuzzes the binary-protocol decoder and the reply encoder.
//!
//! Input: byte 0 picks the chunk size the rest arrives in (and, with its top
//! bit, tight limits); the rest is the client's byte stream. Invariants:
//! - no panic, in decoding or in encoding any reply for a decoded request
//!   (the stream itself is also offered as a reply);
//! - every frame consumes bytes; an error ends the stream;
//! - chunking does not change what is decoded.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use memroute_proto::binary::{BinaryDecoder, BinaryFrame};
use memroute_proto::Limits;

fn limits(tight: bool) -> Limits {
    if tight {
        Limits {
            max_key_len: 16,
            max_item_size: 256,
            ..Limits::default()
        }
    } else {
        Limits::default()
    }
}

/// What a frame decoded to, comparable across runs.
fn summary(frame: &BinaryFrame) -> Vec<u8> {
    match frame {
        BinaryFrame::Request(request, _) => {
            let mut out = request.raw_line().to_vec();
            out.extend_from_slice(request.value());
            out
        }
        BinaryFrame::Reply { bytes, close } => {
            let mut out = bytes.to_vec();
            out.push(u8::from(*close));
            out
        }
        BinaryFrame::TooLarge { key, reply } => {
            let mut out = key.to_vec();
            out.extend_from_slice(reply);
            out
        }
    }
}

/// Decodes everything available; returns true when the stream ended.
fn drain(
    decoder: &mut BinaryDecoder,
    buf: &mut BytesMut,
    replies: &[u8],
    out: &mut Vec<Vec<u8>>,
) -> bool {
    loop {
        let before = buf.len();
        match decoder.decode(buf) {
            Ok(None) => return false,
            Ok(Some(frame)) => {
                assert!(buf.len() < before, "no progress");
                if let BinaryFrame::Request(_, ctx) = &frame {
                    let mut encoded = BytesMut::new();
                    for reply in [
                        &b"HD c1\r\n"[..],
                        b"VA 2 f1 c2\r\nhi\r\n",
                        b"EN\r\n",
                        replies,
                    ] {
                        ctx.encode(&Bytes::copy_from_slice(reply), &mut encoded);
                    }
                }
                out.push(summary(&frame));
            }
            Err(_) => return true,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let limits = limits(selector & 0x80 != 0);
    let chunk = match selector & 0x7f {
        0 => input.len().max(1),
        n => usize::from(n),
    };
    let mut decoder = BinaryDecoder::new(limits.clone());
    let mut buf = BytesMut::new();
    let mut chunked = Vec::new();
    let mut ended = false;
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        if drain(&mut decoder, &mut buf, input, &mut chunked) {
            ended = true;
            break;
        }
    }
    let mut decoder = BinaryDecoder::new(limits);
    let mut buf = BytesMut::from(input);
    let mut whole = Vec::new();
    let whole_ended = drain(&mut decoder, &mut buf, input, &mut whole);
    assert_eq!(whole, chunked, "chunking changed the output");
    assert_eq!(whole_ended, ended);
});
