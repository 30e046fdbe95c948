//! The decoder on the inputs where memcached 1.6.45 answers differently
//! from 1.6.18 (HTTP request lines, short lines, token-bounded lengths,
//! swallowed data blocks): it must never panic, must always make progress,
//! must decode the same however the bytes are chunked (only `Close` may cut
//! a chunked run short), and every request it returns must re-encode and
//! decode to itself. These are the fuzz target's invariants
//! (fuzz/fuzz_targets/decode_request.rs), run here on every chunk size.

use bytes::BytesMut;
use memroute_proto::{Decoded, Limits, ProtocolError, RequestDecoder};

/// Inputs that exercise the 1.6.45 rules, alone and pipelined.
const INPUTS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST /x HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
    b"set a 0 0 1\r\nx\r\nGET / HTTP/1.1\r\nmn\r\n",
    b"get / HTTP/1.1\r\nmx / HTTP/2\r\n",
    b"HTTP/1.1\r\nGET HTTP/\r\nGET / HTTP/\n",
    b"GET x x x x x x x x x x x x x x x x x x x x x HTTP/1.1\r\n",
    b"GET x x x x x x x x x x x x x x x x x x x x x x HTTP/1.1\r\n",
    b"\r\n\n \r\nmn\nmn \nx\r\nxy\n",
    b"set a 0 0 +1\r\nx\r\nset a 0 0 1\r\r\nxx\r\nset a 0 0 -\r\n\r\n",
    b"set a 0 0 4294967297\r\nxx\r\nset a 0 0 2147483646\r\nset a 0 0 2147483645\r\n",
    b"set a 0 0 000000000001\r\nx\r\nset a 0 0 -2147483648\r\n",
    b"cas a 0 0 2\r\nxx\r\ncas a 0 0 2 noreply\r\nxx\r\ncas a 0 0 2 +1\r\nmn\r\n",
    b"cas\r\ncas a\r\ncas a 0 0\r\nset\r\nadd a 0\r\n",
    b"set a 0x1 0 5\r\nmn\r\nx\r\nmn\r\n",
    b"set a 0 0 3 x y z noreply\r\nabc\r\nset a 0 0 1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22\r\nv\r\n",
    b"get\r\ngets\r\ngat\r\ngat 10\r\ngat 4294967296 a\r\ngats -\r\n",
    b"incr a\r\nincr a 1 noreply x\r\ntouch a\r\ntouch a 1 2 3\r\n",
    b"delete\r\ndelete a 5\r\ndelete a b c d e\r\n",
    b"verbosity\r\nverbosity 4294967296\r\nverbosity 1 2 3\r\nflush_all 0 noreply x\r\nflush_all -\r\n",
    b"shutdown\r\nmg\r\nms\r\nmd\r\nma\r\nme\r\nms a +1\r\nxx\r\n",
    b"set a 0 0 1 noreply\r\nxyz\r\nset a 0 0 5\r\nx\r\nget ab\r\n",
];

fn limits() -> [Limits; 2] {
    [
        Limits::default(),
        Limits {
            max_key_len: 4,
            max_item_size: 64,
            max_line_len: 32,
            max_get_line_len: 48,
            max_keys_per_get: 2,
            allow_control_chars_in_keys: false,
        },
    ]
}

/// Decodes what is buffered; true once the decoder asks to close.
fn drain(decoder: &mut RequestDecoder, buf: &mut BytesMut, out: &mut Vec<Decoded>) -> bool {
    loop {
        let before = buf.len();
        match decoder.decode(buf) {
            None => return false,
            Some(Decoded::Error(ProtocolError::Close)) => {
                out.push(Decoded::Error(ProtocolError::Close));
                return true;
            }
            Some(d) => {
                assert!(buf.len() < before, "no progress: {d:?}");
                out.push(d);
            }
        }
    }
}

fn decode(input: &[u8], chunk: usize, limits: &Limits) -> Vec<Decoded> {
    let mut decoder = RequestDecoder::new(limits.clone());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        if drain(&mut decoder, &mut buf, &mut out) {
            break;
        }
    }
    out
}

fn check_request(d: &Decoded, limits: &Limits) {
    let Decoded::Request(r) = d else { return };
    let _ = (r.noreply(), r.key(), r.command().name(), r.has_data_block());
    let mut wire = BytesMut::new();
    r.encode(&mut wire);
    let mut decoder = RequestDecoder::new(limits.clone());
    match decoder.decode(&mut wire) {
        Some(Decoded::Request(again)) => assert_eq!(&again, r),
        other => panic!("re-encoded {r:?} decoded to {other:?}"),
    }
    assert!(wire.is_empty());
}

#[test]
fn inputs_decode_the_same_in_every_chunking() {
    let all: Vec<u8> = INPUTS.concat();
    for limits in &limits() {
        for input in INPUTS.iter().copied().chain([&all[..]]) {
            let whole = decode(input, input.len().max(1), limits);
            for d in &whole {
                check_request(d, limits);
            }
            for chunk in 1..=input.len() {
                let chunked = decode(input, chunk, limits);
                // A long line with no newline yet may close a chunked run
                // early; otherwise chunking changes nothing.
                assert!(
                    whole.starts_with(&chunked[..chunked.len().saturating_sub(1)]),
                    "chunk {chunk}: {chunked:?} vs {whole:?}"
                );
                if chunked.last() != Some(&Decoded::Error(ProtocolError::Close)) {
                    assert_eq!(chunked, whole, "chunk {chunk}");
                }
            }
        }
    }
}

#[test]
fn http_lines_close_and_nothing_after_them_is_read() {
    for input in [INPUTS[0], INPUTS[1], INPUTS[5]] {
        let out = decode(input, input.len(), &Limits::default());
        assert_eq!(out, [Decoded::Error(ProtocolError::Close)], "{input:?}");
    }
    let out = decode(INPUTS[2], 1, &Limits::default());
    assert!(matches!(out[0], Decoded::Request(_)));
    assert_eq!(out[1..], [Decoded::Error(ProtocolError::Close)]);
    // The 24th token is beyond what memcached keeps: not HTTP.
    let out = decode(INPUTS[6], 7, &Limits::default());
    assert_eq!(out, [Decoded::Error(ProtocolError::Reply("ERROR"))]);
}

/// Tokens memcached 1.6.45 ignores in a storage line are not forwarded: an
/// older backend would answer the line and its data block as two commands.
#[test]
fn storage_lines_are_forwarded_without_ignored_tokens() {
    for (sent, forwarded) in [
        (
            &b"set a 0 0 1 x y\r\nv\r\n"[..],
            &b"set a 0 0 1\r\nv\r\n"[..],
        ),
        (
            b"set a 0 0 1 x noreply\r\nv\r\n",
            b"set a 0 0 1 noreply\r\nv\r\n",
        ),
        (b"cas a 0 0 1 7 x\r\nv\r\n", b"cas a 0 0 1 7\r\nv\r\n"),
        (
            b"set a 0 0 1 noreply\r\nv\r\n",
            b"set a 0 0 1 noreply\r\nv\r\n",
        ),
    ] {
        let mut buf = BytesMut::from(sent);
        let Some(Decoded::Request(request)) =
            RequestDecoder::new(Limits::default()).decode(&mut buf)
        else {
            panic!("{sent:?} did not decode");
        };
        let mut out = BytesMut::new();
        request.encode(&mut out);
        assert_eq!(&out[..], forwarded, "{:?}", String::from_utf8_lossy(sent));
    }
}
