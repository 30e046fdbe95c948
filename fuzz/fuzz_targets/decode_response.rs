//! Fuzzes the backend-reply framer.
//!
//! Input: byte 0 picks the request the reply answers, byte 1 the chunk size
//! the rest arrives in. Invariants:
//! - no panic;
//! - `Ok(Some(r))` consumed exactly `r.raw().len()` bytes, and `r.line()`,
//!   `r.value()` lie within it;
//! - `r.raw()` alone frames to an equal response;
//! - the replies framed from chunks are the replies framed from the whole
//!   stream (the framer is stateless, so a prefix either is incomplete or
//!   frames the same reply).
//!
//! The same input is also split into the pieces of a joined multi-key get
//! reply (`decode_retrieval_piece`): an incomplete or malformed piece
//! consumes nothing, and a `VALUE` piece is a complete single-key reply
//! (the single-get framer takes it whole, with its key).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use memroute_proto::{
    decode_retrieval_piece, Decoded, Limits, Request, RequestDecoder, ResponseDecoder,
    RetrievalPiece,
};

const REQUESTS: &[&[u8]] = &[
    b"get a\r\n",
    b"gets a b\r\n",
    b"gat 0 a\r\n",
    b"set a 0 0 1\r\nx\r\n",
    b"cas a 0 0 1 5\r\nx\r\n",
    b"delete a\r\n",
    b"incr a 1\r\n",
    b"touch a 0\r\n",
    b"flush_all\r\n",
    b"version\r\n",
    b"verbosity 1\r\n",
    b"stats\r\n",
    b"stats slabs\r\n",
    b"mg a v f t\r\n",
    b"mg a\r\n",
    b"ms a 1 T0\r\nx\r\n",
    b"md a q\r\n",
    b"ma a v\r\n",
    b"me a\r\n",
    b"mn\r\n",
];

fn request(i: u8) -> Request {
    let wire = REQUESTS[usize::from(i) % REQUESTS.len()];
    let mut buf = BytesMut::from(wire);
    match RequestDecoder::new(Limits::default()).decode(&mut buf) {
        Some(Decoded::Request(r)) => r,
        other => panic!("bad fixed request {wire:?}: {other:?}"),
    }
}

type Framed = Vec<Result<memroute_proto::Response, memroute_proto::response::MalformedResponse>>;

/// Frames every complete reply in `buf`, stopping at the first error.
fn drain(decoder: &ResponseDecoder, buf: &mut BytesMut, out: &mut Framed) -> bool {
    loop {
        let before = buf.len();
        match decoder.decode(buf) {
            Ok(None) => {
                assert_eq!(buf.len(), before, "incomplete reply consumed bytes");
                return false;
            }
            Err(e) => {
                assert_eq!(buf.len(), before, "malformed reply consumed bytes");
                out.push(Err(e));
                return true;
            }
            Ok(Some(r)) => {
                assert_eq!(before - buf.len(), r.raw().len(), "consumed != raw length");
                assert!(!r.raw().is_empty());
                assert!(r.line().len() <= r.raw().len());
                if let Some(v) = r.value() {
                    assert!(v.len() < r.raw().len());
                }
                let _ = (r.code(), r.is_hit(), r.is_ok());
                let mut alone = BytesMut::from(&r.raw()[..]);
                assert_eq!(
                    decoder.decode(&mut alone),
                    Ok(Some(r.clone())),
                    "raw re-frames differently"
                );
                assert!(alone.is_empty());
                out.push(Ok(r));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [kind, chunk, input @ ..] = data else {
        return;
    };
    let decoder = ResponseDecoder::for_request(&request(*kind));
    let chunk = usize::from(*chunk).max(1);

    let mut chunked = Framed::new();
    let mut buf = BytesMut::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        if drain(&decoder, &mut buf, &mut chunked) {
            break;
        }
    }

    let mut whole = Framed::new();
    drain(&decoder, &mut BytesMut::from(input), &mut whole);
    assert_eq!(chunked, whole, "chunking changed the framing");

    let single_get = ResponseDecoder::for_request(&request(0));
    let mut buf = BytesMut::from(input);
    loop {
        let before = buf.len();
        match decode_retrieval_piece(&mut buf) {
            Ok(None) | Err(_) => {
                assert_eq!(buf.len(), before, "no piece, yet bytes consumed");
                break;
            }
            Ok(Some(RetrievalPiece::Value(r))) => {
                assert!(buf.len() < before);
                assert!(r.retrieval_key().is_some());
                let mut alone = BytesMut::from(&r.raw()[..]);
                assert_eq!(single_get.decode(&mut alone), Ok(Some(r.clone())));
                assert!(alone.is_empty());
            }
            Ok(Some(RetrievalPiece::End | RetrievalPiece::Error(_))) => {
                assert!(buf.len() < before)
            }
        }
    }
});
