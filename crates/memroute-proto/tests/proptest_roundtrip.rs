//! Property tests for the sans-IO codecs.
//!
//! Requests of every command are generated together with the typed value the
//! decoder must produce, rendered to wire bytes (random spacing, `\r\n` or
//! `\n` line ends, binary values holding `\r\n`), and checked for:
//!
//! - (a) decoding yields exactly one `Request` with the expected fields;
//! - (b) `Request::encode` reproduces the wire bytes (with `\r\n` line ends);
//! - (c) a pipeline decodes the same whether the bytes arrive at once or in
//!   arbitrary chunks;
//! - (d) invalid input never panics, every `Some` makes progress (except
//!   `Close`), and the decoder recovers: valid requests after refused ones
//!   still decode, and a final `mn` is always `MetaNoop`;
//! - (e) replies written with `reply::*` are framed by `ResponseDecoder` to
//!   the right code and value, and every strict prefix is `Ok(None)`.

use bytes::{Bytes, BytesMut};
use memroute_proto::reply::{self, MetaReply};
use memroute_proto::request::Keys;
use memroute_proto::{
    ArithCommand, ArithOp, Command, Decoded, GetCommand, GetOp, Limits, MetaOp, ProtocolError,
    Request, ResponseCode, ResponseDecoder, StoreCommand, StoreOp,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

// ------------------------------------------------------------------------
// Generated requests and what they must decode to
// ------------------------------------------------------------------------

/// A request as tokens (joined by a [`Layout`]), an optional data block, and
/// the expected decoding.
#[derive(Debug, Clone)]
struct Wire {
    tokens: Vec<Vec<u8>>,
    value: Option<Vec<u8>>,
    expect: Expect,
}

// Test data: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Expect {
    /// Every non-meta command can be built exactly.
    Text(Command),
    /// `MetaFlags` has private state, so meta commands are compared field
    /// by field.
    Meta(MetaExpect),
}

#[derive(Debug, Clone)]
struct MetaExpect {
    op: MetaOp,
    key: Vec<u8>,
    wire_key: Vec<u8>,
    flags: Vec<GenFlag>,
}

#[derive(Debug, Clone)]
struct GenFlag {
    letter: u8,
    token: Vec<u8>,
    typed: Typed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Typed {
    None,
    Ttl(i32),
    Vivify(i32),
    Recache(i32),
    CompareCas(u64),
    NewCas(u64),
    ClientFlags(u32),
    Mode(u8),
    Delta(u64),
    Initial(u64),
}

/// Whitespace around and between tokens, and the line terminator.
#[derive(Debug, Clone)]
struct Layout {
    lead: usize,
    gaps: Vec<usize>,
    trail: usize,
    crlf: bool,
}

/// A fully rendered request.
#[derive(Debug, Clone)]
struct Generated {
    line: Vec<u8>,
    crlf: bool,
    value: Option<Vec<u8>>,
    expect: Expect,
}

impl Generated {
    fn new(wire: Wire, layout: Layout) -> Self {
        let mut line = vec![b' '; layout.lead];
        for (i, t) in wire.tokens.iter().enumerate() {
            if i > 0 {
                let gap = layout.gaps.get(i - 1).copied().unwrap_or(1);
                line.resize(line.len() + gap, b' ');
            }
            line.extend_from_slice(t);
        }
        line.resize(line.len() + layout.trail, b' ');
        Generated {
            // memcached 1.6.45 refuses a line under 4 bytes with its
            // newline, so a bare `mn` needs `\r\n`.
            crlf: layout.crlf || line.len() < 3,
            line,
            value: wire.value,
            expect: wire.expect,
        }
    }

    /// The bytes as a client sends them.
    fn wire(&self) -> Vec<u8> {
        let mut out = self.line.clone();
        out.extend_from_slice(if self.crlf { b"\r\n" } else { b"\n" });
        if let Some(v) = &self.value {
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// What `Request::encode` must write: the same, always with `\r\n`.
    fn canonical(&self) -> Vec<u8> {
        let mut out = self.line.clone();
        out.extend_from_slice(b"\r\n");
        if let Some(v) = &self.value {
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

fn check_request(g: &Generated, r: &Request) {
    assert_eq!(&r.raw_line()[..], &g.line[..], "raw line");
    assert_eq!(&r.value()[..], g.value.as_deref().unwrap_or(&[]), "value");
    assert_eq!(r.has_data_block(), g.value.is_some(), "has_data_block");
    match &g.expect {
        Expect::Text(command) => assert_eq!(r.command(), command),
        Expect::Meta(m) => check_meta(m, r.command()),
    }
    let mut out = BytesMut::new();
    r.encode(&mut out);
    assert_eq!(&out[..], &g.canonical()[..], "encode");
}

fn check_meta(expect: &MetaExpect, command: &Command) {
    let Command::Meta(m) = command else {
        panic!("expected a meta command, got {command:?}")
    };
    assert_eq!(m.op, expect.op);
    assert_eq!(&m.key[..], &expect.key[..], "key");
    assert_eq!(&m.wire_key[..], &expect.wire_key[..], "wire key");
    let got: Vec<(u8, Vec<u8>)> = m
        .flags
        .iter()
        .map(|f| (f.letter, f.token.to_vec()))
        .collect();
    let want: Vec<(u8, Vec<u8>)> = expect
        .flags
        .iter()
        .map(|f| (f.letter, f.token.clone()))
        .collect();
    assert_eq!(got, want, "flags in order");
    assert_eq!(m.flags.len(), want.len());
    assert_eq!(m.flags.is_empty(), want.is_empty());
    for (letter, token) in &want {
        assert!(m.flags.has(*letter));
        assert_eq!(m.flags.token(*letter), Some(&token[..]));
    }
    let has = |l: u8| want.iter().any(|(w, _)| *w == l);
    assert_eq!(m.flags.base64_key(), has(b'b'));
    assert_eq!(m.flags.quiet(), has(b'q'));
    assert_eq!(m.flags.return_value(), has(b'v'));
    let opaque = want.iter().find(|(l, _)| *l == b'O').map(|(_, t)| &t[..]);
    assert_eq!(m.flags.opaque(), opaque);
    let typed = |f: fn(Typed) -> Option<u64>| expect.flags.iter().find_map(|g| f(g.typed));
    let i32_of = |f: fn(Typed) -> Option<i32>| expect.flags.iter().find_map(|g| f(g.typed));
    assert_eq!(
        m.flags.ttl,
        i32_of(|t| match t {
            Typed::Ttl(v) => Some(v),
            _ => None,
        })
    );
    assert_eq!(
        m.flags.vivify_ttl,
        i32_of(|t| match t {
            Typed::Vivify(v) => Some(v),
            _ => None,
        })
    );
    assert_eq!(
        m.flags.recache_ttl,
        i32_of(|t| match t {
            Typed::Recache(v) => Some(v),
            _ => None,
        })
    );
    assert_eq!(
        m.flags.compare_cas,
        typed(|t| match t {
            Typed::CompareCas(v) => Some(v),
            _ => None,
        })
    );
    assert_eq!(
        m.flags.new_cas,
        typed(|t| match t {
            Typed::NewCas(v) => Some(v),
            _ => None,
        })
    );
    assert_eq!(
        m.flags.client_flags.map(u64::from),
        typed(|t| match t {
            Typed::ClientFlags(v) => Some(u64::from(v)),
            _ => None,
        })
    );
    assert_eq!(
        m.flags.mode.map(u64::from),
        typed(|t| match t {
            Typed::Mode(v) => Some(u64::from(v)),
            _ => None,
        })
    );
    assert_eq!(
        m.flags.delta,
        typed(|t| match t {
            Typed::Delta(v) => Some(v),
            _ => None,
        })
    );
    assert_eq!(
        m.flags.initial,
        typed(|t| match t {
            Typed::Initial(v) => Some(v),
            _ => None,
        })
    );
}

// ------------------------------------------------------------------------
// Strategies
// ------------------------------------------------------------------------

/// A signed number token and the value memcached reads from it (wrapped to
/// 32 bits, as `safe_strtol` into an `int32_t` does).
fn i32_token() -> impl Strategy<Value = (Vec<u8>, i32)> {
    prop_oneof![
        4 => any::<i32>().prop_map(|v| (v.to_string().into_bytes(), v)),
        1 => (0..=i32::MAX).prop_map(|v| (format!("+{v}").into_bytes(), v)),
        1 => (0u32..100_000, 1usize..4)
            .prop_map(|(v, z)| (format!("{}{v}", "0".repeat(z)).into_bytes(), v as i32)),
        1 => any::<i64>().prop_map(|v| (v.to_string().into_bytes(), v as i32)),
    ]
}

/// A signed number token as memcached 1.6.45 reads `gat` and `flush_all`
/// delays (whole token, optional `-`, no wrapping, at most 11 bytes).
fn strict_i32_token() -> impl Strategy<Value = (Vec<u8>, i32)> {
    prop_oneof![
        4 => any::<i32>().prop_map(|v| (v.to_string().into_bytes(), v)),
        1 => (0u32..100_000, 1usize..4)
            .prop_map(|(v, z)| (format!("{}{v}", "0".repeat(z)).into_bytes(), v as i32)),
    ]
}

/// An unsigned number token as 1.6.45 reads the `cas` compare value
/// (digits only, at most 22 bytes).
fn strict_u64_token() -> impl Strategy<Value = (Vec<u8>, u64)> {
    prop_oneof![
        4 => any::<u64>().prop_map(|v| (v.to_string().into_bytes(), v)),
        1 => (0u64..100_000, 1usize..4)
            .prop_map(|(v, z)| (format!("{}{v}", "0".repeat(z)).into_bytes(), v)),
    ]
}

/// An unsigned number token and its value.
fn u64_token() -> impl Strategy<Value = (Vec<u8>, u64)> {
    prop_oneof![
        4 => any::<u64>().prop_map(|v| (v.to_string().into_bytes(), v)),
        1 => any::<u64>().prop_map(|v| (format!("+{v}").into_bytes(), v)),
        1 => (0u64..100_000, 1usize..4)
            .prop_map(|(v, z)| (format!("{}{v}", "0".repeat(z)).into_bytes(), v)),
        1 => Just((b"-0".to_vec(), 0)),
    ]
}

/// A byte allowed in a text key (no spaces or control characters).
fn key_byte() -> impl Strategy<Value = u8> {
    prop_oneof![8 => b'!'..=b'~', 1 => 0x80u8..=0xff]
}

fn text_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => vec(select(&b"abcdefghijklmnopqrstuvwxyz0123456789_:-"[..]), 1..16),
        2 => vec(key_byte(), 1..=250),
        1 => vec(key_byte(), 250..=250),
    ]
    // As the last token of `delete <key>`, `noreply` is the keyword.
    .prop_filter("noreply is a keyword", |k| k != b"noreply")
}

/// Data blocks: binary, dense in `\r` and `\n`, or protocol look-alikes.
fn value_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..64),
        2 => vec(select(&b"ab\r\n \0\xff"[..]), 0..64),
        1 => vec(any::<u8>(), 0..2048),
        1 => Just(b"\r\n".to_vec()),
        1 => Just(b"END\r\nmn\r\nset a 0 0 1\r\n".to_vec()),
    ]
}

/// A data block length token: plain or zero-padded (memcached 1.6.45
/// refuses a `+`).
fn len_token(len: usize, style: u8) -> Vec<u8> {
    match style {
        0 => format!("0{len}"),
        1 => format!("00{len}"),
        _ => len.to_string(),
    }
    .into_bytes()
}

fn name(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn get_cmd() -> impl Strategy<Value = Wire> {
    let ops = [GetOp::Get, GetOp::Gets, GetOp::Gat, GetOp::Gats];
    (
        select(ops.to_vec()),
        strict_i32_token(),
        vec(text_key(), 1..8),
    )
        .prop_map(|(op, (et, exptime), keys)| {
            let mut tokens = vec![name(op.name())];
            let exptime = if op.touches() {
                tokens.push(et);
                exptime
            } else {
                0
            };
            tokens.extend(keys.iter().cloned());
            let keys: Keys = keys.into_iter().map(Bytes::from).collect();
            Wire {
                tokens,
                value: None,
                expect: Expect::Text(Command::Get(GetCommand { op, exptime, keys })),
            }
        })
}

fn store_cmd() -> impl Strategy<Value = Wire> {
    let ops = [
        StoreOp::Set,
        StoreOp::Add,
        StoreOp::Replace,
        StoreOp::Append,
        StoreOp::Prepend,
        StoreOp::Cas,
    ];
    (
        select(ops.to_vec()),
        text_key(),
        u64_token(),
        i32_token(),
        value_bytes(),
        0u8..4,
        strict_u64_token(),
        any::<bool>(),
    )
        .prop_map(
            |(op, key, (ft, flags), (et, exptime), value, style, (ct, cas), noreply)| {
                let mut tokens = vec![name(op.name()), key.clone(), ft, et];
                tokens.push(len_token(value.len(), style));
                let cas = if op == StoreOp::Cas {
                    tokens.push(ct);
                    cas
                } else {
                    0
                };
                if noreply {
                    tokens.push(name("noreply"));
                }
                let command = Command::Store(StoreCommand {
                    op,
                    key: Bytes::from(key),
                    flags: flags as u32,
                    exptime,
                    cas,
                    noreply,
                });
                Wire {
                    tokens,
                    value: Some(value),
                    expect: Expect::Text(command),
                }
            },
        )
}

fn text_cmd() -> impl Strategy<Value = Wire> {
    let text = |tokens: Vec<Vec<u8>>, command: Command| Wire {
        tokens,
        value: None,
        expect: Expect::Text(command),
    };
    let with_noreply = |mut tokens: Vec<Vec<u8>>, noreply: bool| {
        if noreply {
            tokens.push(name("noreply"));
        }
        tokens
    };
    prop_oneof![
        (text_key(), any::<bool>(), any::<bool>()).prop_map(move |(key, hold, noreply)| {
            let mut tokens = vec![name("delete"), key.clone()];
            if hold {
                tokens.push(name("0"));
            }
            let command = Command::Delete {
                key: Bytes::from(key),
                noreply,
            };
            text(with_noreply(tokens, noreply), command)
        }),
        (any::<bool>(), text_key(), u64_token(), any::<bool>()).prop_map(
            move |(incr, key, (dt, delta), noreply)| {
                let op = if incr { ArithOp::Incr } else { ArithOp::Decr };
                let word = if incr { "incr" } else { "decr" };
                let tokens = vec![name(word), key.clone(), dt];
                let command = Command::Arith(ArithCommand {
                    op,
                    key: Bytes::from(key),
                    delta,
                    noreply,
                });
                text(with_noreply(tokens, noreply), command)
            }
        ),
        (text_key(), i32_token(), any::<bool>()).prop_map(move |(key, (et, exptime), noreply)| {
            let tokens = vec![name("touch"), key.clone(), et];
            let command = Command::Touch {
                key: Bytes::from(key),
                exptime,
                noreply,
            };
            text(with_noreply(tokens, noreply), command)
        }),
        (prop::option::of(strict_i32_token()), any::<bool>()).prop_map(move |(delay, noreply)| {
            let mut tokens = vec![name("flush_all")];
            let delay = delay.map_or(0, |(t, d)| {
                tokens.push(t);
                d
            });
            text(
                with_noreply(tokens, noreply),
                Command::FlushAll { delay, noreply },
            )
        }),
        (any::<u32>(), any::<bool>()).prop_map(move |(level, noreply)| {
            let tokens = vec![name("verbosity"), level.to_string().into_bytes()];
            text(
                with_noreply(tokens, noreply),
                Command::Verbosity { noreply },
            )
        }),
        (vec(vec(key_byte(), 1..12), 0..4), vec(1usize..4, 4)).prop_map(move |(args, gaps)| {
            let mut joined = Vec::new();
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    joined.resize(joined.len() + gaps[i - 1], b' ');
                }
                joined.extend_from_slice(a);
            }
            let mut tokens = vec![name("stats")];
            if !joined.is_empty() {
                tokens.push(joined.clone());
            }
            text(
                tokens,
                Command::Stats {
                    args: Bytes::from(joined),
                },
            )
        }),
        Just(text(vec![name("version")], Command::Version)),
        Just(text(vec![name("quit")], Command::Quit)),
        Just(text(vec![name("mn")], Command::MetaNoop)),
    ]
}

fn flag(letter: u8, token: Vec<u8>, typed: Typed) -> GenFlag {
    GenFlag {
        letter,
        token,
        typed,
    }
}

/// One meta flag other than `b` that `op` accepts, with a valid token.
fn meta_flag(op: MetaOp) -> BoxedStrategy<GenFlag> {
    let modes: &'static [u8] = match op {
        MetaOp::Set => b"EAPRS",
        MetaOp::Arith => b"ID+-",
        _ => b"!#0129ABEIPRSZaez~",
    };
    prop_oneof![
        4 => (
            select(&b"cfhklqstuvxIPL"[..]),
            prop_oneof![4 => Just(Vec::new()), 1 => vec(key_byte(), 1..8)],
        )
            .prop_map(|(l, t)| flag(l, t, Typed::None)),
        1 => i32_token().prop_map(|(t, v)| flag(b'T', t, Typed::Ttl(v))),
        1 => i32_token().prop_map(|(t, v)| flag(b'N', t, Typed::Vivify(v))),
        1 => i32_token().prop_map(|(t, v)| flag(b'R', t, Typed::Recache(v))),
        1 => u64_token().prop_map(|(t, v)| flag(b'C', t, Typed::CompareCas(v))),
        1 => u64_token().prop_map(|(t, v)| flag(b'E', t, Typed::NewCas(v))),
        1 => u64_token().prop_map(|(t, v)| flag(b'F', t, Typed::ClientFlags(v as u32))),
        1 => u64_token().prop_map(|(t, v)| flag(b'D', t, Typed::Delta(v))),
        1 => u64_token().prop_map(|(t, v)| flag(b'J', t, Typed::Initial(v))),
        1 => select(modes).prop_map(|m| flag(b'M', vec![m], Typed::Mode(m))),
        1 => vec(key_byte(), 0..=31).prop_map(|t| flag(b'O', t, Typed::None)),
    ]
    .boxed()
}

/// Standard base64 with padding, written independently of the crate's.
fn base64(input: &[u8]) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(c.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(c.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[((n >> (18 - 6 * i)) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    out
}

fn meta_cmd() -> impl Strategy<Value = Wire> {
    let ops = [
        MetaOp::Get,
        MetaOp::Set,
        MetaOp::Delete,
        MetaOp::Arith,
        MetaOp::Debug,
    ];
    select(ops.to_vec())
        .prop_flat_map(|op| {
            (
                Just(op),
                prop_oneof![
                    3 => text_key().prop_map(|k| (k, false)),
                    // 186 bytes encode to 248 characters: the wire key must
                    // fit in 250 too.
                    1 => vec(any::<u8>(), 1..=186).prop_map(|k| (k, true)),
                ],
                vec(meta_flag(op), 0..16),
                any::<Index>(),
                value_bytes(),
                0u8..4,
            )
        })
        .prop_map(|(op, (key, base64_key), gen_flags, b_at, value, style)| {
            let mut flags: Vec<GenFlag> = Vec::new();
            for f in gen_flags {
                if !flags.iter().any(|g| g.letter == f.letter) {
                    flags.push(f);
                }
            }
            // At most 16 flags: `ms k 1` plus 16 stays under memcached's 20
            // tokens.
            flags.truncate(15);
            if op == MetaOp::Debug {
                flags.clear();
            }
            let wire_key = if base64_key {
                flags.insert(b_at.index(flags.len() + 1), flag(b'b', vec![], Typed::None));
                base64(&key)
            } else {
                key.clone()
            };
            let mut tokens = vec![name(op.name()), wire_key.clone()];
            let value = (op == MetaOp::Set).then(|| {
                tokens.push(len_token(value.len(), style));
                value
            });
            for f in &flags {
                let mut t = vec![f.letter];
                t.extend_from_slice(&f.token);
                tokens.push(t);
            }
            Wire {
                tokens,
                value,
                expect: Expect::Meta(MetaExpect {
                    op,
                    key,
                    wire_key,
                    flags,
                }),
            }
        })
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        prop_oneof![6 => Just(0usize), 1 => 1usize..3],
        vec(prop_oneof![8 => Just(1usize), 1 => 2usize..4], 24),
        prop_oneof![6 => Just(0usize), 1 => 1usize..3],
        prop_oneof![4 => Just(true), 1 => Just(false)],
    )
        .prop_map(|(lead, gaps, trail, crlf)| Layout {
            lead,
            gaps,
            trail,
            crlf,
        })
}

fn request() -> impl Strategy<Value = Generated> {
    (
        prop_oneof![
            2 => get_cmd(),
            2 => store_cmd(),
            3 => text_cmd(),
            4 => meta_cmd(),
        ],
        layout(),
    )
        .prop_map(|(wire, layout)| Generated::new(wire, layout))
}

/// Chunk sizes to feed a stream with, cycled: single bytes, small or large.
fn chunking() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        1 => Just(vec![1]),
        2 => vec(1usize..8, 1..16),
        2 => vec(1usize..512, 1..16),
    ]
}

// ------------------------------------------------------------------------
// Driving the decoder
// ------------------------------------------------------------------------

/// Decodes everything available, checking progress; returns true on `Close`.
fn drain(
    decoder: &mut memroute_proto::RequestDecoder,
    buf: &mut BytesMut,
    out: &mut Vec<Decoded>,
) -> bool {
    loop {
        let before = buf.len();
        match decoder.decode(buf) {
            None => return false,
            // `Close` is exempt from the progress rule (it may even follow
            // bytes swallowed in the same call) and ends the stream.
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

fn decode_chunked(input: &[u8], chunks: &[usize], limits: &Limits) -> Vec<Decoded> {
    let mut decoder = memroute_proto::RequestDecoder::new(limits.clone());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().expect("non-empty chunking")).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        if drain(&mut decoder, &mut buf, &mut out) {
            return out;
        }
    }
    out
}

fn decode_whole(input: &[u8], limits: &Limits) -> (Vec<Decoded>, BytesMut) {
    let mut decoder = memroute_proto::RequestDecoder::new(limits.clone());
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    drain(&mut decoder, &mut buf, &mut out);
    (out, buf)
}

// ------------------------------------------------------------------------
// Invalid input
// ------------------------------------------------------------------------

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A data line that is itself refused with `ERROR` (no command is upper
/// case or starts with a digit), and holds no `\r\n`.
fn filler() -> impl Strategy<Value = Vec<u8>> {
    vec(select(&b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[..]), 0..24)
}

fn bad_i32() -> impl Strategy<Value = &'static str> {
    select(
        &[
            "abc",
            "0x10",
            "1.5",
            "+",
            "-",
            "--1",
            "99999999999999999999",
            "1e3",
            "1-",
        ][..],
    )
}

fn bad_u64() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        bad_i32(),
        select(&["-1", "-42", "18446744073709551616"][..])
    ]
}

fn bad_len() -> impl Strategy<Value = &'static str> {
    select(
        &[
            "-1",
            "abc",
            "0x1",
            "99999999999999999999",
            "-2147483648",
            "+",
        ][..],
    )
}

/// Limits for the invalid-input tests: items above 4 KiB are refused, and
/// so are keys with control characters (the strict option; memcached's
/// default accepts them).
fn small_limits() -> Limits {
    Limits {
        max_item_size: 4096,
        allow_control_chars_in_keys: false,
        ..Limits::default()
    }
}

/// One refused request (with whatever data it carries) and the exact number
/// of errors it decodes to (a data block that is not swallowed becomes a
/// line of its own, refused with `ERROR`); it never decodes to a request.
fn invalid_unit() -> impl Strategy<Value = (Vec<u8>, usize)> {
    let long_key = vec(key_byte(), 251..400);
    // A lone `-` is a valid (zero) number where 1.6.45 reads the token whole.
    let bad_strict_i32 = bad_i32().prop_filter("a lone - reads as 0", |t| *t != "-");
    prop_oneof![
        // Garbage line: the first token is never a command.
        (
            select(&b"ABCXYZ019#!~\x01\x7f\xff"[..]),
            vec(
                any::<u8>().prop_filter("no newline", |&b| b != b'\n'),
                0..200
            ),
            any::<bool>(),
        )
            .prop_map(|(first, rest, crlf)| {
                let end: &[u8] = if crlf { b"\r\n" } else { b"\n" };
                (concat(&[&[first], &rest, end]), 1)
            }),
        // Blank lines.
        (0usize..5).prop_map(|n| (concat(&[&vec![b' '; n], b"\r\n"]), 1)),
        // Keys over 250 bytes.
        (long_key, 0usize..13, filler()).prop_map(|(k, which, fill)| {
            let k = &k[..];
            let n = fill.len().to_string();
            let n = n.as_bytes();
            match which {
                0 => (concat(&[b"get ", k, b"\r\n"]), 1),
                1 => (concat(&[b"gets a ", k, b"\r\n"]), 1),
                2 => (concat(&[b"gat 0 ", k, b"\r\n"]), 1),
                3 => (concat(&[b"delete ", k, b"\r\n"]), 1),
                4 => (concat(&[b"incr ", k, b" 1\r\n"]), 1),
                5 => (concat(&[b"touch ", k, b" 0 noreply\r\n"]), 1),
                6 => (concat(&[b"mg ", k, b" v\r\n"]), 1),
                7 => (concat(&[b"md ", k, b"\r\n"]), 1),
                8 => (concat(&[b"ma ", k, b"\r\n"]), 1),
                9 => (concat(&[b"me ", k, b"\r\n"]), 1),
                // 1.6.45 swallows the data block of a refused storage
                // command once its length is known.
                10 => (
                    concat(&[b"set ", k, b" 0 0 ", n, b"\r\n", &fill, b"\r\n"]),
                    1,
                ),
                11 => (
                    concat(&[b"cas ", k, b" 0 0 ", n, b" 1 noreply\r\n", &fill, b"\r\n"]),
                    1,
                ),
                _ => (concat(&[b"ms ", k, b" ", n, b" T0\r\n", &fill, b"\r\n"]), 2),
            }
        }),
        // Bad numbers.
        (
            bad_i32(),
            bad_u64(),
            bad_len(),
            bad_strict_i32,
            0usize..18,
            filler(),
            vec(any::<u8>(), 0..32)
        )
            .prop_map(|(bi, bu, bl, bs, which, fill, data)| {
                let (bi, bu, bl, bs) = (bi.as_bytes(), bu.as_bytes(), bl.as_bytes(), bs.as_bytes());
                let n = fill.len().to_string();
                let n = n.as_bytes();
                let dn = data.len().to_string();
                let dn = dn.as_bytes();
                match which {
                    0 => (
                        concat(&[b"set k ", bu, b" 0 ", n, b"\r\n", &fill, b"\r\n"]),
                        1,
                    ),
                    1 => (
                        concat(&[b"add k 0 ", bi, b" ", n, b"\r\n", &fill, b"\r\n"]),
                        1,
                    ),
                    // A refused length swallows nothing.
                    2 => (concat(&[b"set k 0 0 ", bl, b"\r\n", &fill, b"\r\n"]), 2),
                    3 => (
                        concat(&[b"cas k 0 0 ", n, b" ", bu, b"\r\n", &fill, b"\r\n"]),
                        1,
                    ),
                    4 => (concat(&[b"incr k ", bu, b"\r\n"]), 1),
                    5 => (concat(&[b"decr k ", bu, b" noreply\r\n"]), 1),
                    6 => (concat(&[b"touch k ", bi, b"\r\n"]), 1),
                    7 => (concat(&[b"gat ", bs, b" k\r\n"]), 1),
                    8 => (concat(&[b"gats ", bs, b" k j\r\n"]), 1),
                    9 => (concat(&[b"flush_all ", bs, b"\r\n"]), 1),
                    10 => (concat(&[b"verbosity ", bu, b"\r\n"]), 1),
                    11 => (concat(&[b"mg k v T", bi, b"\r\n"]), 1),
                    12 => (concat(&[b"mg k N", bi, b" k\r\n"]), 1),
                    13 => (concat(&[b"md k C", bu, b"\r\n"]), 1),
                    14 => (concat(&[b"ma k D", bu, b"\r\n"]), 1),
                    15 => (concat(&[b"ma k J", bu, b" N0\r\n"]), 1),
                    16 => (concat(&[b"ms k ", bl, b"\r\n", &fill, b"\r\n"]), 2),
                    // A refused `ms` swallows its data block, whatever it holds.
                    _ => (
                        concat(&[b"ms k ", dn, b" F", bu, b"\r\n", &data, b"\r\n"]),
                        1,
                    ),
                }
            }),
        // Oversized values are swallowed whatever they hold.
        (4096usize..6000, 0usize..3)
            .prop_flat_map(|(len, which)| (Just(which), vec(any::<u8>(), len..=len)))
            .prop_map(|(which, data)| {
                let n = data.len().to_string();
                let n = n.as_bytes();
                let unit = match which {
                    0 => concat(&[b"set k 0 0 ", n, b"\r\n", &data, b"\r\n"]),
                    1 => concat(&[b"append k 0 0 ", n, b" noreply\r\n", &data, b"\r\n"]),
                    _ => concat(&[b"ms k ", n, b" T0 F1\r\n", &data, b"\r\n"]),
                };
                (unit, 1)
            }),
        // Data blocks longer than announced: bad data chunk, then the rest
        // of the block is a line of its own.
        (filler(), 1usize..10, any::<bool>()).prop_map(|(fill, extra, meta)| {
            let mut data = fill.clone();
            data.resize(data.len() + extra, b'Q');
            let n = fill.len().to_string();
            let n = n.as_bytes();
            let unit = if meta {
                concat(&[b"ms k ", n, b"\r\n", &data, b"\r\n"])
            } else {
                concat(&[b"set k 0 0 ", n, b"\r\n", &data, b"\r\n"])
            };
            (unit, 2)
        }),
        // Meta flag errors and other refusals.
        select(vec![
            (&b"mg k zz\r\n"[..], 1),
            (b"mg k v v\r\n", 1),
            (b"mg k O123456789012345678901234567890123\r\n", 1),
            (b"mg k M\r\n", 1),
            (b"mg k MAB\r\n", 1),
            (b"ms k 2 MX\r\nab\r\n", 1),
            (b"ms k 2 zz\r\n\r\n\r\n", 1),
            (b"ma k MX\r\n", 1),
            (b"md k zz\r\n", 1),
            (b"mg !!!! b\r\n", 1),
            (b"mg YQ= b\r\n", 1),
            (b"me ==== b\r\n", 1),
            (b"mg k v s t f c h k l O1 q u x I P L E1 N1 R1\r\n", 1),
            (b"ms k 1 v s t f c h k l O1 q u x I P L E1 N1\r\nX\r\n", 2),
            (b"ms k\r\n", 1),
            (b"mg\r\n", 1),
            (b"get\r\n", 1),
            (b"gat\r\n \r\n", 2),
            (b"set a 0 0\r\n", 1),
            (b"set a 0 0 +1\r\nXY\r\n", 2),
            (b"set a 0 0 1\r\r\nXY\r\n", 2),
            (b"cas a 0 0 2\r\nXY\r\n", 1),
            (b"cas\r\n", 1),
            (b"delete a 5\r\n", 1),
            (b"delete a 0 0\r\n", 1),
            (b"delete\r\n", 1),
            (b"incr a\r\n", 1),
            (b"touch a\r\n", 1),
            (b"verbosity\r\n", 1),
            (b"flush_all +1\r\n", 1),
            (b"mn\n", 1),
            (b"\n", 1),
            (b"HTTP/1.1\r\n", 1),
            (b"shutdown\r\n", 1),
            (b"GET a\r\n", 1),
            (b"Set a 0 0 1\r\nX\r\n", 2),
            (b"get a\x01b\r\n", 1),
            (b"get a\rb\r\n", 1),
        ])
        .prop_map(|(s, n)| (s.to_vec(), n)),
    ]
}

// ------------------------------------------------------------------------
// Replies
// ------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ReplyCase {
    request: Vec<u8>,
    reply: Vec<u8>,
    code: ResponseCode,
    line: Vec<u8>,
    value: Option<Vec<u8>>,
    hit: bool,
}

fn first_line(reply: &[u8]) -> Vec<u8> {
    let end = reply.windows(2).position(|w| w == b"\r\n").unwrap();
    reply[..end].to_vec()
}

fn case(
    request: &[u8],
    reply: BytesMut,
    code: ResponseCode,
    value: Option<Vec<u8>>,
    hit: bool,
) -> ReplyCase {
    ReplyCase {
        request: request.to_vec(),
        line: first_line(&reply),
        reply: reply.to_vec(),
        code,
        value,
        hit,
    }
}

fn get_reply() -> impl Strategy<Value = ReplyCase> {
    (
        any::<bool>(),
        vec(
            (text_key(), any::<u32>(), value_bytes(), any::<u64>()),
            0..4,
        ),
    )
        .prop_map(|(gets, items)| {
            let mut request = name(if gets { "gets" } else { "get" });
            if items.is_empty() {
                request.extend_from_slice(b" miss");
            }
            let mut out = BytesMut::new();
            for (key, flags, data, cas) in &items {
                request.push(b' ');
                request.extend_from_slice(key);
                reply::value(&mut out, key, *flags, data, gets.then_some(*cas));
            }
            request.extend_from_slice(b"\r\n");
            reply::end(&mut out);
            let value = items.first().map(|i| i.2.clone());
            let code = if items.is_empty() {
                ResponseCode::End
            } else {
                ResponseCode::Value
            };
            let hit = value.is_some();
            case(&request, out, code, value, hit)
        })
}

fn return_flags<'a>(mut r: MetaReply<'a>, flags: &[(u8, u64, Vec<u8>)]) -> MetaReply<'a> {
    for (kind, n, token) in flags {
        r = match kind % 6 {
            0 => r.flag_u64(b'f', *n),
            1 => r.flag_i64(b't', *n as i64),
            2 => r.key(token, true).flag(b'b'),
            3 => r.key(if token.is_empty() { b"k" } else { token }, false),
            4 => r.flag_bytes(b'O', token),
            _ => r.flag(b'W'),
        };
    }
    r
}

fn meta_reply() -> impl Strategy<Value = ReplyCase> {
    (
        0usize..12,
        vec((any::<u8>(), any::<u64>(), vec(key_byte(), 0..12)), 0..5),
        value_bytes(),
    )
        .prop_map(|(which, flags, data)| {
            let mut out = BytesMut::new();
            let (request, code, value, hit): (&[u8], _, _, _) = match which {
                0 | 1 => {
                    return_flags(MetaReply::value(&mut out, data.len()), &flags).finish();
                    reply::data(&mut out, &data);
                    (b"mg k v f t\r\n", ResponseCode::Va, Some(data), true)
                }
                2 => {
                    return_flags(MetaReply::new(&mut out, "HD"), &flags).finish();
                    (b"mg k t\r\n", ResponseCode::Hd, None, true)
                }
                3 => {
                    return_flags(MetaReply::new(&mut out, "EN"), &flags).finish();
                    (b"mg k v\r\n", ResponseCode::En, None, false)
                }
                4 => {
                    MetaReply::new(&mut out, "HD").finish();
                    (b"ms k 1 T0\r\nx\r\n", ResponseCode::Hd, None, false)
                }
                5 => {
                    return_flags(MetaReply::new(&mut out, "NS"), &flags).finish();
                    (b"ms k 1 MA\r\nx\r\n", ResponseCode::Ns, None, false)
                }
                6 => {
                    return_flags(MetaReply::new(&mut out, "EX"), &flags).finish();
                    (b"ms k 1 C5\r\nx\r\n", ResponseCode::Ex, None, false)
                }
                7 => {
                    return_flags(MetaReply::new(&mut out, "NF"), &flags).finish();
                    (b"md k q\r\n", ResponseCode::Nf, None, false)
                }
                8 => {
                    MetaReply::new(&mut out, "HD").finish();
                    (b"md k\r\n", ResponseCode::Hd, None, false)
                }
                9 => {
                    let n = flags.first().map_or(0, |f| f.1).to_string();
                    MetaReply::value(&mut out, n.len()).finish();
                    reply::data(&mut out, n.as_bytes());
                    (b"ma k v\r\n", ResponseCode::Va, Some(n.into_bytes()), true)
                }
                10 => {
                    MetaReply::new(&mut out, "MN").finish();
                    (b"mn\r\n", ResponseCode::Mn, None, false)
                }
                _ => {
                    reply::line(&mut out, "ME k exp=-1 la=2 cas=3 fetch=no cls=1 size=63");
                    (b"me k\r\n", ResponseCode::Me, None, false)
                }
            };
            case(request, out, code, value, hit)
        })
}

fn line_reply() -> impl Strategy<Value = ReplyCase> {
    let lines: &'static [(&'static [u8], &'static str, ResponseCode)] = &[
        (b"set k 0 0 1\r\nx\r\n", "STORED", ResponseCode::Stored),
        (
            b"add k 0 0 1\r\nx\r\n",
            "NOT_STORED",
            ResponseCode::NotStored,
        ),
        (b"cas k 0 0 1 5\r\nx\r\n", "EXISTS", ResponseCode::Exists),
        (
            b"cas k 0 0 1 5\r\nx\r\n",
            "NOT_FOUND",
            ResponseCode::NotFound,
        ),
        (b"delete k\r\n", "DELETED", ResponseCode::Deleted),
        (b"delete k\r\n", "NOT_FOUND", ResponseCode::NotFound),
        (b"touch k 10\r\n", "TOUCHED", ResponseCode::Touched),
        (b"flush_all\r\n", "OK", ResponseCode::Ok),
        (b"verbosity 1\r\n", "OK", ResponseCode::Ok),
        (b"version\r\n", "VERSION 1.6.38", ResponseCode::Version),
    ];
    let errors: &'static [(&'static str, ResponseCode)] = &[
        ("ERROR", ResponseCode::Error),
        (
            "CLIENT_ERROR bad command line format",
            ResponseCode::ClientError,
        ),
        (
            "SERVER_ERROR out of memory storing object",
            ResponseCode::ServerError,
        ),
    ];
    let requests: &'static [&'static [u8]] = &[
        b"get k\r\n",
        b"set k 0 0 1\r\nx\r\n",
        b"mg k v\r\n",
        b"ms k 1\r\nx\r\n",
        b"stats\r\n",
        b"incr k 1\r\n",
        b"mn\r\n",
        b"me k\r\n",
    ];
    prop_oneof![
        select(lines).prop_map(|(req, line, code)| {
            let mut out = BytesMut::new();
            reply::line(&mut out, line);
            case(req, out, code, None, false)
        }),
        (any::<bool>(), any::<u64>()).prop_map(|(incr, n)| {
            let mut out = BytesMut::new();
            reply::number(&mut out, n);
            let req: &[u8] = if incr {
                b"incr k 1\r\n"
            } else {
                b"decr k 1\r\n"
            };
            case(req, out, ResponseCode::Number, None, false)
        }),
        (select(errors), select(requests)).prop_map(|((line, code), req)| {
            let mut out = BytesMut::new();
            reply::line(&mut out, line);
            case(req, out, code, None, false)
        }),
        vec(("[a-z_:]{1,12}", any::<u64>()), 0..5).prop_map(|stats| {
            let mut out = BytesMut::new();
            for (name, value) in &stats {
                reply::stat(&mut out, name, value);
            }
            reply::end(&mut out);
            let code = if stats.is_empty() {
                ResponseCode::End
            } else {
                ResponseCode::Stat
            };
            case(b"stats\r\n", out, code, None, false)
        }),
    ]
}

fn decode_one(wire: &[u8]) -> Request {
    let mut buf = BytesMut::from(wire);
    match memroute_proto::RequestDecoder::new(Limits::default()).decode(&mut buf) {
        Some(Decoded::Request(r)) => {
            assert!(buf.is_empty(), "one request");
            r
        }
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------------------------------
// Properties
// ------------------------------------------------------------------------

proptest! {
    /// (a) + (b): one request decodes to exactly the generated value and
    /// re-encodes to the same bytes.
    #[test]
    fn request_decodes_and_reencodes(g in request()) {
        let (decoded, rest) = decode_whole(&g.wire(), &Limits::default());
        prop_assert!(rest.is_empty(), "left over: {:?}", rest);
        prop_assert_eq!(decoded.len(), 1, "{:?}", decoded);
        let Decoded::Request(r) = &decoded[0] else {
            panic!("not a request: {decoded:?}")
        };
        check_request(&g, r);
        // The canonical form decodes to the same request.
        let (again, _) = decode_whole(&g.canonical(), &Limits::default());
        prop_assert_eq!(&again, &decoded);
        // And the request's accessors agree with its command.
        let _ = (r.noreply(), r.command().name(), ResponseDecoder::for_request(r));
        if let Some(k) = r.key() {
            prop_assert!(!k.is_empty());
        }
    }

    /// (c): a pipeline decodes identically at once or in arbitrary chunks.
    #[test]
    fn pipeline_is_split_invariant(reqs in vec(request(), 1..24), chunks in chunking()) {
        let wire: Vec<u8> = reqs.iter().flat_map(Generated::wire).collect();
        let (whole, rest) = decode_whole(&wire, &Limits::default());
        prop_assert!(rest.is_empty());
        let split = decode_chunked(&wire, &chunks, &Limits::default());
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(whole.len(), reqs.len());
        for (g, d) in reqs.iter().zip(&whole) {
            let Decoded::Request(r) = d else { panic!("not a request: {d:?}") };
            check_request(g, r);
        }
    }

    /// (d): refused requests mixed with valid ones: no panic, progress, the
    /// same result in any chunking and as the units decoded one by one (no
    /// state leaks from a refused request), each refused unit gives exactly
    /// its errors, every valid request still decodes, and a final `mn` is
    /// `MetaNoop`.
    #[test]
    fn decoder_recovers_from_invalid_input(
        units in vec(prop_oneof![
            2 => invalid_unit().prop_map(Err),
            1 => request().prop_map(Ok),
        ], 1..12),
        chunks in chunking(),
    ) {
        let limits = small_limits();
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for u in &units {
            let bytes = match u {
                Ok(g) => g.wire(),
                Err((bad, _)) => bad.clone(),
            };
            let (alone, rest) = decode_whole(&bytes, &limits);
            prop_assert!(rest.is_empty(), "left over: {:?}", rest);
            match u {
                Ok(g) => {
                    prop_assert_eq!(alone.len(), 1);
                    let Decoded::Request(r) = &alone[0] else { panic!("{alone:?}") };
                    check_request(g, r);
                }
                Err((_, errors)) => {
                    prop_assert_eq!(alone.len(), *errors, "{:?}", alone);
                    for d in &alone {
                        let Decoded::Error(e) = d else { panic!("a request: {d:?}") };
                        prop_assert!(!e.closes());
                    }
                }
            }
            expected.extend(alone);
            wire.extend(bytes);
        }
        wire.extend_from_slice(b"mn\r\n");
        let (whole, rest) = decode_whole(&wire, &limits);
        prop_assert!(rest.is_empty(), "left over: {:?}", rest);
        let split = decode_chunked(&wire, &chunks, &limits);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(whole.last(), Some(&Decoded::Request(decode_one(b"mn\r\n"))));
        prop_assert_eq!(&whole[..whole.len() - 1], &expected[..]);
    }

    /// (d): arbitrary bytes (shorter than the line limit, so chunking cannot
    /// trigger `Close`) never panic, always progress, and decode the same in
    /// any chunking.
    #[test]
    fn arbitrary_bytes_never_panic(
        parts in vec(prop_oneof![
            2 => vec(any::<u8>(), 0..32),
            1 => select(vec![
                &b"get "[..], b"gat ", b"set ", b"cas ", b"ms ", b"mg ", b"ma ", b"md ",
                b"me ", b"mn", b"delete ", b"incr ", b"touch ", b"flush_all", b"stats",
                b" 0 ", b" 1 ", b" 5", b" -1", b" 4294967297 ", b" noreply", b"\r\n",
                b"\n", b" ", b"k", b" b", b" v", b" T", b" q", b" O1", b" MS", b" S2",
                b"YWJj", b"\r",
            ]).prop_map(<[u8]>::to_vec),
        ], 0..80),
        chunks in chunking(),
        small in any::<bool>(),
    ) {
        let mut wire: Vec<u8> = parts.concat();
        wire.truncate(2000);
        let limits = if small {
            Limits { max_item_size: 128, max_key_len: 8, max_keys_per_get: 2, ..Limits::default() }
        } else {
            Limits::default()
        };
        let (whole, _) = decode_whole(&wire, &limits);
        let split = decode_chunked(&wire, &chunks, &limits);
        prop_assert_eq!(&whole, &split);
        for d in &whole {
            if let Decoded::Request(r) = d {
                let mut out = BytesMut::new();
                r.encode(&mut out);
                let (again, rest) = decode_whole(&out, &limits);
                prop_assert!(rest.is_empty());
                prop_assert_eq!(&again[..], std::slice::from_ref(d));
            }
        }
    }

    /// A line that grows past the limit without a newline closes the
    /// connection, however it arrives; retrieval lines have a larger limit.
    #[test]
    fn long_line_closes(
        first in select(&b"sxmSGX0#"[..]),
        rest in vec(any::<u8>().prop_filter("no newline", |&b| b != b'\n'), 2048..3000),
        chunks in chunking(),
    ) {
        let mut wire = vec![first];
        wire.extend_from_slice(&rest);
        let out = decode_chunked(&wire, &chunks, &Limits::default());
        prop_assert_eq!(out.last(), Some(&Decoded::Error(ProtocolError::Close)));
        let mut get = b"get ".to_vec();
        get.extend_from_slice(&rest);
        let out = decode_chunked(&get, &chunks, &Limits::default());
        prop_assert!(out.is_empty(), "{:?}", out);
    }

    /// (e): replies written by `reply::*` are framed by `ResponseDecoder` to
    /// the right code and value; every strict prefix is incomplete.
    #[test]
    fn replies_round_trip(
        c in prop_oneof![get_reply(), meta_reply(), line_reply()],
        cuts in vec(any::<Index>(), 48),
        trailer in vec(any::<u8>(), 0..16),
    ) {
        let request = decode_one(&c.request);
        let decoder = ResponseDecoder::for_request(&request);
        let len = c.reply.len();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(len)).collect();
        points.extend(0..len.min(48));
        points.extend(len.saturating_sub(48)..len);
        for cut in points {
            let mut buf = BytesMut::from(&c.reply[..cut]);
            prop_assert_eq!(decoder.decode(&mut buf), Ok(None), "cut at {}", cut);
            prop_assert_eq!(buf.len(), cut);
        }
        let mut buf = BytesMut::from(&c.reply[..]);
        buf.extend_from_slice(&trailer);
        let r = decoder.decode(&mut buf).expect("well formed").expect("complete");
        prop_assert_eq!(&r.raw()[..], &c.reply[..]);
        prop_assert_eq!(&buf[..], &trailer[..]);
        prop_assert_eq!(r.code(), c.code);
        prop_assert_eq!(r.line(), &c.line[..]);
        prop_assert_eq!(r.value(), c.value.as_deref());
        prop_assert_eq!(r.is_hit(), c.hit);
        prop_assert_eq!(r.is_ok(), !c.code.is_error());
        // The raw reply alone frames to the same response.
        let mut alone = BytesMut::from(&r.raw()[..]);
        prop_assert_eq!(decoder.decode(&mut alone), Ok(Some(r.clone())));
        prop_assert!(alone.is_empty());
    }
}
