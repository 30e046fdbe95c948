//! The incremental decoder for client requests (text and meta protocols).
//!
//! [`RequestDecoder::decode`] takes bytes from the front of a connection's
//! read buffer. It returns `None` when it needs more bytes (a normal
//! outcome, not an error), a [`Request`], or a [`ProtocolError`] that says
//! exactly what memcached would answer and whether the connection
//! survives. Where memcached 1.6.45 answers the classic text commands
//! differently from 1.6.18 (1.6.45 parses them with the parser its proxy
//! uses, `proto_parser.c`), the decoder follows 1.6.45; docs/compatibility.md
//! lists the rules. The decoder keeps two pieces of state between calls, as
//! memcached's connection state machine does: a storage command whose data
//! block has not fully arrived, and a count of bytes still to swallow after
//! an oversized value.

use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::errors::ErrorReply;
use crate::limits::{take_frame, Limits};
use crate::meta::{base64_decode, MetaFlags};
use crate::number::{
    parse_flags, parse_i32_wrapping, parse_token_i32, parse_token_u32, parse_token_u64, parse_u64,
};
use crate::request::{
    ArithCommand, ArithOp, Command, GetCommand, GetOp, Keys, MetaCommand, MetaOp, Request,
    StoreCommand, StoreOp,
};

/// What one call to [`RequestDecoder::decode`] produced.
// The request variant is large, but boxing it would cost an allocation per
// request; the value is moved once, straight to the executor.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Request(Request),
    Error(ProtocolError),
}

/// A request memcached would refuse, with the reply it would give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// Send this line (without `\r\n`); the connection stays open.
    Reply(&'static str),
    /// A storage command whose item exceeds the size limit: its data block
    /// is swallowed and `SERVER_ERROR object too large for cache` sent
    /// (unless `silent`, for `noreply`). memcached also drops the key's old
    /// value for `set` and `ms` (`drops_existing`), so stale data cannot
    /// outlive a write that failed.
    TooLarge {
        key: Bytes,
        drops_existing: bool,
        silent: bool,
    },
    /// The request carried `noreply`, which in the text protocol hides
    /// error replies too (memcached's behaviour); nothing is sent.
    Silent,
    /// Close the connection without a reply: a line grew past the limit
    /// with no newline in sight, or a request line looks like HTTP (see
    /// `looks_like_http`).
    Close,
}

impl ProtocolError {
    /// The reply line, if one is sent.
    pub fn reply_line(&self) -> Option<&'static str> {
        match self {
            ProtocolError::Reply(line) => Some(line),
            ProtocolError::TooLarge { silent: false, .. } => Some(TOO_LARGE),
            _ => None,
        }
    }

    /// Whether the connection must be closed.
    pub fn closes(&self) -> bool {
        matches!(self, ProtocolError::Close)
    }
}

const ERROR: &str = ErrorReply::Error.text();
const BAD_FORMAT: &str = ErrorReply::BadFormat.text();
const BAD_CHUNK: &str = ErrorReply::BadChunk.text();
const TOO_LARGE: &str = ErrorReply::TooLarge.text();
const BAD_EXPTIME: &str = ErrorReply::BadExptime.text();
const BAD_DELTA: &str = ErrorReply::BadDelta.text();
const DELETE_USAGE: &str = ErrorReply::DeleteUsage.text();
const TOO_MANY_KEYS: &str = ErrorReply::TooManyKeys.text();

/// memcached 1.6.45's tokenizer (`mcmc_tokenize`, vendor/mcmc/mcmc.c) keeps
/// at most this many tokens; a longer line's last kept token is the one it
/// reads `noreply` (and the HTTP guard's `HTTP/`) from.
const MAX_TOKENS: usize = 23;
/// memcached 1.6.45 refuses a line shorter than this, counting its `\n`
/// (`process_request` in proto_parser.c: "min command length is 2, plus
/// the \r\n"), so an empty line and `mn\n` are refused.
const MIN_LINE_LEN: usize = 4;
/// The largest data block length memcached accepts (`INT_MAX - 2`).
const MAX_VALUE_LEN: i32 = i32::MAX - 2;
/// Meta commands refuse lines with this many tokens or more.
const META_MAX_TOKENS: usize = 20;

/// A refused line: the reply and how many data bytes follow it that must be
/// swallowed.
struct LineError {
    error: ProtocolError,
    swallow: usize,
}

impl LineError {
    fn reply(line: &'static str) -> Self {
        LineError {
            error: ProtocolError::Reply(line),
            swallow: 0,
        }
    }
    fn swallowing(line: &'static str, swallow: usize) -> Self {
        LineError {
            error: ProtocolError::Reply(line),
            swallow,
        }
    }
    /// Applies memcached's text-protocol rule that `noreply` hides errors.
    fn unless_noreply(mut self, noreply: bool) -> Self {
        if noreply {
            self.error = ProtocolError::Silent;
        }
        self
    }
}

enum Parsed {
    Ready(Request),
    /// The line is a storage command; this many value bytes (plus `\r\n`)
    /// follow.
    NeedsData(Request, usize),
}

/// A storage request whose data block is still arriving.
struct Pending {
    request: Request,
    value_len: usize,
}

/// Decodes client requests from a byte stream. One per connection.
pub struct RequestDecoder {
    limits: Limits,
    swallow: usize,
    pending: Option<Pending>,
}

impl RequestDecoder {
    pub fn new(limits: Limits) -> Self {
        RequestDecoder {
            limits,
            swallow: 0,
            pending: None,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the decoder holds a partly received request (or is
    /// swallowing a refused value): graceful shutdown waits for these.
    pub fn is_mid_request(&self) -> bool {
        self.swallow > 0 || self.pending.is_some()
    }

    /// Decodes the next request from the front of `buf`, consuming its
    /// bytes. `None` means more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Decoded> {
        loop {
            if self.swallow > 0 {
                let n = self.swallow.min(buf.len());
                buf.advance(n);
                self.swallow -= n;
                if self.swallow > 0 {
                    return None;
                }
            }
            if let Some(pending) = &self.pending {
                let total = pending.value_len + 2;
                if buf.len() < total {
                    // Make room once for the whole value rather than growing
                    // step by step as a large value trickles in.
                    buf.reserve(total - buf.len());
                    return None;
                }
                let Pending {
                    mut request,
                    value_len,
                } = self.pending.take().expect("checked above");
                let data = take_frame(buf, total);
                if &data[value_len..] != b"\r\n" {
                    let error = if request.noreply() {
                        ProtocolError::Silent
                    } else {
                        ProtocolError::Reply(BAD_CHUNK)
                    };
                    return Some(Decoded::Error(error));
                }
                request.value = data.slice(..value_len);
                return Some(Decoded::Request(request));
            }
            if buf.is_empty() {
                return None;
            }
            let Some((newline, holds_nul)) = line_end(buf) else {
                let limit = if is_retrieval_prefix(buf) {
                    self.limits.max_get_line_len
                } else {
                    self.limits.max_line_len
                };
                if buf.len() > limit {
                    return Some(Decoded::Error(ProtocolError::Close));
                }
                return None;
            };
            let line_end = if newline > 0 && buf[newline - 1] == b'\r' {
                newline - 1
            } else {
                newline
            };
            let mut frame = take_frame(buf, newline + 1);
            if newline + 1 < MIN_LINE_LEN {
                return Some(Decoded::Error(ProtocolError::Reply(BAD_FORMAT)));
            }
            frame.truncate(line_end);
            let parsed = parse_line(frame, &self.limits);
            if holds_nul {
                let LineError { error, swallow } = refuse_nul(parsed);
                self.swallow = swallow;
                return Some(Decoded::Error(error));
            }
            match parsed {
                Ok(Parsed::Ready(request)) => return Some(Decoded::Request(request)),
                Ok(Parsed::NeedsData(request, value_len)) => {
                    self.pending = Some(Pending { request, value_len });
                }
                Err(LineError { error, swallow }) => {
                    self.swallow = swallow;
                    return Some(Decoded::Error(error));
                }
            }
        }
    }
}

/// Where the command line at the front of `buf` ends (its newline), and
/// whether it holds a NUL byte: one scan for both, as the common line has
/// none.
fn line_end(buf: &[u8]) -> Option<(usize, bool)> {
    let first = memchr::memchr2(b'\n', 0, buf)?;
    if buf[first] == b'\n' {
        return Some((first, false));
    }
    let newline = first + memchr::memchr(b'\n', &buf[first..])?;
    Some((newline, true))
}

/// A command line that holds a NUL byte is refused, as a line with a bad
/// key is: `CLIENT_ERROR bad command line format` (hidden by `noreply`),
/// and a storage command's data block is swallowed.
///
/// memcached 1.6.18 reads a command line as a C string: a NUL ends it
/// there, so `set a<NUL>b 0 0 9` is `set a` and its data block the next
/// command. 1.6.45 reads lines by length, the NUL a key byte like any
/// other. A proxy that forwarded such a line could not know which reading
/// its backend makes, and a backend that reads two requests where the
/// proxy sent one answers twice: the second reply goes to the next
/// request on the connection, another client's. The embedded cache answers
/// as the proxy does, so the two modes agree.
#[cold]
fn refuse_nul(parsed: Result<Parsed, LineError>) -> LineError {
    match parsed {
        Ok(Parsed::Ready(request)) => {
            LineError::reply(BAD_FORMAT).unless_noreply(request.noreply())
        }
        Ok(Parsed::NeedsData(request, value_len)) => {
            LineError::swallowing(BAD_FORMAT, value_len + 2).unless_noreply(request.noreply())
        }
        Err(refused) => refused,
    }
}

fn is_retrieval_prefix(buf: &[u8]) -> bool {
    let trimmed = &buf[buf.iter().take_while(|&&b| b == b' ').count()..];
    [&b"get "[..], b"gets ", b"gat ", b"gats "]
        .iter()
        .any(|p| trimmed.starts_with(p))
}

/// Start and end offsets of the space-separated tokens of a line.
type Tokens = SmallVec<[(u32, u32); 12]>;

fn tokenize(line: &[u8]) -> Tokens {
    let mut tokens = Tokens::new();
    let mut pos = 0;
    while pos < line.len() {
        if line[pos] == b' ' {
            pos += 1;
            continue;
        }
        let end = pos + token_end(&line[pos..]);
        tokens.push((pos as u32, end as u32));
        pos = end + 1;
    }
    tokens
}

/// Where the space-separated token at the front of `rest` ends. A short
/// token (a command, a number) is walked byte by byte; past that, memchr
/// finds the end of a long one (most of a line is its key) in a few steps,
/// but costs more than a short walk to call.
pub(crate) fn token_end(rest: &[u8]) -> usize {
    const SHORT: usize = 8;
    let head = &rest[..rest.len().min(SHORT)];
    match head.iter().position(|&b| b == b' ') {
        Some(end) => end,
        None if rest.len() > SHORT => {
            memchr::memchr(b' ', &rest[SHORT..]).map_or(rest.len(), |end| SHORT + end)
        }
        None => rest.len(),
    }
}

/// The tokens of one line, as zero-copy slices.
struct Line {
    bytes: Bytes,
    tokens: Tokens,
}

impl Line {
    fn len(&self) -> usize {
        self.tokens.len()
    }
    fn raw(&self, i: usize) -> &[u8] {
        let (s, e) = self.tokens[i];
        &self.bytes[s as usize..e as usize]
    }
    fn slice(&self, i: usize) -> Bytes {
        let (s, e) = self.tokens[i];
        self.bytes.slice(s as usize..e as usize)
    }
    /// The last token memcached 1.6.45's tokenizer keeps (it keeps at
    /// most [`MAX_TOKENS`]).
    fn last_kept(&self) -> &[u8] {
        self.raw(self.len().min(MAX_TOKENS) - 1)
    }
    /// `_process_request_noreply` (proto_parser.c): the last kept token is
    /// exactly `noreply`, wherever it stands.
    fn ends_with_noreply(&self) -> bool {
        self.len() > 1 && self.last_kept() == b"noreply"
    }
}

/// The commands memcached 1.6.45 hands to its table of other text
/// commands (`text_cmd_entries` in proto_text.c, default build) when its
/// parser does not know the first token; the table matches a first token
/// that is a prefix of a name.
const TEXT_TABLE: [&[u8]; 8] = [
    b"shutdown",
    b"slabs",
    b"cache_memlimit",
    b"flush_all",
    b"lru_crawler",
    b"verbosity",
    b"lru",
    b"extstore",
];

/// memcached's guard against cross-protocol requests from browsers
/// (`process_command_ascii` in proto_text.c): a line whose command is
/// unknown, with more than one token, whose last kept token starts with
/// `HTTP/` (`GET / HTTP/1.1`, `POST /x HTTP/1.0`) closes the connection
/// without a reply. Known commands are unaffected: `get / HTTP/1.1` is a
/// get of two keys.
fn looks_like_http(line: &Line) -> bool {
    let first = line.raw(0);
    // Commands memcached knows and memroute does not implement.
    if TEXT_TABLE.iter().any(|name| name.starts_with(first)) {
        return false;
    }
    line.len() > 1 && line.last_kept().starts_with(b"HTTP/")
}

/// The tokens after the command, as one trimmed slice (empty if none).
fn rest_of_line(line: &Line) -> Bytes {
    if line.len() > 1 {
        let start = line.tokens[1].0 as usize;
        let end = line.tokens[line.len() - 1].1 as usize;
        line.bytes.slice(start..end)
    } else {
        Bytes::new()
    }
}

fn key_ok(key: &[u8], limits: &Limits) -> bool {
    !key.is_empty()
        && key.len() <= limits.max_key_len
        && (limits.allow_control_chars_in_keys || key.iter().all(|&b| b > 0x20 && b != 0x7f))
}

fn parse_line(bytes: Bytes, limits: &Limits) -> Result<Parsed, LineError> {
    match single_key_get(bytes, limits) {
        Ok(request) => Ok(Parsed::Ready(request)),
        Err(bytes) => parse_tokenized(bytes, limits),
    }
}

/// Any line, by its tokens.
fn parse_tokenized(bytes: Bytes, limits: &Limits) -> Result<Parsed, LineError> {
    let tokens = tokenize(&bytes);
    let line = Line { bytes, tokens };
    if line.len() == 0 {
        return Err(LineError::reply(ERROR));
    }
    let ready = |command| {
        Ok(Parsed::Ready(Request::new(
            line.bytes.clone(),
            Bytes::new(),
            command,
        )))
    };
    match line.raw(0) {
        b"get" => parse_get(&line, GetOp::Get, limits).map(Parsed::Ready),
        b"gets" => parse_get(&line, GetOp::Gets, limits).map(Parsed::Ready),
        b"gat" => parse_get(&line, GetOp::Gat, limits).map(Parsed::Ready),
        b"gats" => parse_get(&line, GetOp::Gats, limits).map(Parsed::Ready),
        b"set" => parse_store(&line, StoreOp::Set, limits),
        b"add" => parse_store(&line, StoreOp::Add, limits),
        b"replace" => parse_store(&line, StoreOp::Replace, limits),
        b"append" => parse_store(&line, StoreOp::Append, limits),
        b"prepend" => parse_store(&line, StoreOp::Prepend, limits),
        b"cas" => parse_store(&line, StoreOp::Cas, limits),
        b"incr" => parse_arith(&line, ArithOp::Incr, limits),
        b"decr" => parse_arith(&line, ArithOp::Decr, limits),
        b"delete" => parse_delete(&line, limits),
        b"touch" => parse_touch(&line, limits),
        b"mg" => parse_meta(&line, MetaOp::Get, limits),
        b"ms" => parse_meta(&line, MetaOp::Set, limits),
        b"md" => parse_meta(&line, MetaOp::Delete, limits),
        b"ma" => parse_meta(&line, MetaOp::Arith, limits),
        b"me" => parse_meta(&line, MetaOp::Debug, limits),
        b"mn" => ready(Command::MetaNoop),
        b"version" => ready(Command::Version),
        b"quit" => ready(Command::Quit),
        b"stats" => ready(Command::Stats {
            args: rest_of_line(&line),
        }),
        b"watch" => ready(Command::Watch {
            args: rest_of_line(&line),
        }),
        // 1.6.45 (`process_flush_all_command`): extra tokens are ignored;
        // the delay is read unless the line is `flush_all [noreply]`.
        b"flush_all" => {
            let noreply = line.ends_with_noreply();
            let delay = if line.len() == 1 + usize::from(noreply) {
                0
            } else {
                parse_token_i32(line.raw(1))
                    .ok_or_else(|| LineError::reply(BAD_EXPTIME).unless_noreply(noreply))?
            };
            ready(Command::FlushAll { delay, noreply })
        }
        // 1.6.45 (`process_verbosity_command`): a missing level is a format
        // error, extra tokens are ignored.
        b"verbosity" => {
            let noreply = line.ends_with_noreply();
            if line.len() < 2 || parse_token_u32(line.raw(1)).is_none() {
                return Err(LineError::reply(BAD_FORMAT).unless_noreply(noreply));
            }
            ready(Command::Verbosity { noreply })
        }
        b"shutdown" => Err(LineError::reply(ErrorReply::Shutdown.text())),
        _ if looks_like_http(&line) => Err(LineError {
            error: ProtocolError::Close,
            swallow: 0,
        }),
        _ => Err(LineError::reply(ERROR)),
    }
}

/// `get <key>` or `gets <key>`, the most common lines, read without the
/// general tokenizer and command table (a pooled get costs about 330
/// instructions less, docs/benchmarks.md, run 27). Only a line of
/// the command, one space and a key the general path accepts is taken;
/// anything else (other spacing, more keys, a refused key) is handed back
/// for [`parse_line`] to read, so both read every line alike.
fn single_key_get(line: Bytes, limits: &Limits) -> Result<Request, Bytes> {
    let (op, start) = if line.starts_with(b"get ") {
        (GetOp::Get, 4)
    } else if line.starts_with(b"gets ") {
        (GetOp::Gets, 5)
    } else {
        return Err(line);
    };
    let key = &line[start..];
    if limits.max_keys_per_get == 0 || memchr::memchr(b' ', key).is_some() || !key_ok(key, limits) {
        return Err(line);
    }
    let mut keys = Keys::new();
    keys.push(line.slice(start..));
    let command = Command::Get(GetCommand {
        op,
        exptime: 0,
        keys,
    });
    Ok(Request::new(line, Bytes::new(), command))
}

fn parse_get(line: &Line, op: GetOp, limits: &Limits) -> Result<Request, LineError> {
    // 1.6.45 (`_process_request_simple` / `_process_request_gat`): a
    // retrieval without a key is a format error.
    if line.len() < 2 + usize::from(op.touches()) {
        return Err(LineError::reply(BAD_FORMAT));
    }
    let (exptime, first_key) = if op.touches() {
        let exptime = parse_token_i32(line.raw(1)).ok_or(LineError::reply(BAD_EXPTIME))?;
        (exptime, 2)
    } else {
        (0, 1)
    };
    if line.len() - first_key > limits.max_keys_per_get {
        return Err(LineError::reply(TOO_MANY_KEYS));
    }
    let mut keys = Keys::with_capacity(line.len() - first_key);
    for i in first_key..line.len() {
        if !key_ok(line.raw(i), limits) {
            return Err(LineError::reply(BAD_FORMAT));
        }
        keys.push(line.slice(i));
    }
    let command = Command::Get(GetCommand { op, exptime, keys });
    Ok(Request::new(line.bytes.clone(), Bytes::new(), command))
}

/// The length of a data block as memcached 1.6.45 reads it (for storage
/// commands and `ms`): a token-bounded `int32` from 0 to `INT_MAX - 2`.
fn value_len(token: &[u8]) -> Option<usize> {
    parse_token_i32(token)
        .filter(|len| (0..=MAX_VALUE_LEN).contains(len))
        .and_then(|len| usize::try_from(len).ok())
}

/// A storage command, as memcached 1.6.45 parses it: `_process_request_storage`
/// (proto_parser.c) needs at least five tokens and a valid length before it
/// looks at anything else, and refuses the line otherwise with
/// `CLIENT_ERROR bad command line format`, shown even with `noreply` and
/// without swallowing the data block. Tokens after the arguments are
/// ignored; `noreply` is the last token. Then `process_update_cmd_start`
/// checks the key, flags, exptime and (for `cas`) the compare value, and
/// refuses with the same line but swallows the data block (and hides the
/// reply for `noreply`), as it does for an item that is too large.
fn parse_store(line: &Line, op: StoreOp, limits: &Limits) -> Result<Parsed, LineError> {
    let n = line.len();
    if n < 5 {
        return Err(LineError::reply(BAD_FORMAT));
    }
    let value_len = value_len(line.raw(4)).ok_or(LineError::reply(BAD_FORMAT))?;
    let noreply = line.ends_with_noreply();
    let bad = || LineError::swallowing(BAD_FORMAT, value_len + 2).unless_noreply(noreply);
    let key = line.raw(1);
    if !key_ok(key, limits) {
        return Err(bad());
    }
    let flags = parse_flags(line.raw(2)).ok_or_else(bad)?;
    let exptime = parse_i32_wrapping(line.raw(3)).ok_or_else(bad)?;
    let cas = if op == StoreOp::Cas {
        // A missing compare value is refused like a malformed one.
        let token = if n > 5 { line.raw(5) } else { b"" };
        parse_token_u64(token)
            .filter(|_| !token.is_empty())
            .ok_or_else(bad)?
    } else {
        0
    };
    if !limits.item_fits(key.len(), value_len) {
        return Err(LineError {
            error: ProtocolError::TooLarge {
                key: line.slice(1),
                drops_existing: op == StoreOp::Set,
                silent: noreply,
            },
            swallow: value_len + 2,
        });
    }
    let command = Command::Store(StoreCommand {
        op,
        key: line.slice(1),
        flags,
        exptime,
        cas,
        noreply,
    });
    // A line with tokens memcached ignores is forwarded without them: an
    // older server behind a proxy would answer the line and then its data
    // block as two commands, and fall out of step.
    let arguments = 5 + usize::from(op == StoreOp::Cas);
    let wire = if n == arguments + usize::from(noreply) {
        line.bytes.clone()
    } else {
        let mut canonical = BytesMut::with_capacity(line.bytes.len());
        for i in 0..arguments {
            if i > 0 {
                canonical.extend_from_slice(b" ");
            }
            canonical.extend_from_slice(line.raw(i));
        }
        if noreply {
            canonical.extend_from_slice(b" noreply");
        }
        canonical.freeze()
    };
    Ok(Parsed::NeedsData(
        Request::new(wire, Bytes::new(), command),
        value_len,
    ))
}

/// `incr`/`decr`, as 1.6.45 parses them (`_process_request_simple` with
/// three tokens at least; later tokens are ignored).
fn parse_arith(line: &Line, op: ArithOp, limits: &Limits) -> Result<Parsed, LineError> {
    if line.len() < 3 {
        return Err(LineError::reply(BAD_FORMAT));
    }
    let noreply = line.ends_with_noreply();
    if !key_ok(line.raw(1), limits) {
        return Err(LineError::reply(BAD_FORMAT).unless_noreply(noreply));
    }
    let delta = parse_u64(line.raw(2))
        .ok_or_else(|| LineError::reply(BAD_DELTA).unless_noreply(noreply))?;
    let command = Command::Arith(ArithCommand {
        op,
        key: line.slice(1),
        delta,
        noreply,
    });
    Ok(Parsed::Ready(Request::new(
        line.bytes.clone(),
        Bytes::new(),
        command,
    )))
}

/// `delete <key> [0] [noreply]`. A missing key is refused as 1.6.45
/// refuses it. Later tokens are checked as memcached 1.6.18 checks them,
/// a deliberate difference: 1.6.45 (`process_delete_cmd`) ignores them, so
/// `delete a 5` and `delete a b c d e` delete `a`, but libmemcached's
/// `memccapable -a` requires `delete a b c d e` to be refused.
fn parse_delete(line: &Line, limits: &Limits) -> Result<Parsed, LineError> {
    let n = line.len();
    if n < 2 {
        return Err(LineError::reply(BAD_FORMAT));
    }
    if n > 4 {
        return Err(LineError::reply(ERROR));
    }
    let noreply = line.ends_with_noreply();
    if n > 2 {
        // `delete <key> 0` is a legacy form memcached 1.6.18 accepts.
        let hold_is_zero = line.raw(2) == b"0";
        let valid = (n == 3 && (hold_is_zero || noreply)) || (n == 4 && hold_is_zero && noreply);
        if !valid {
            return Err(LineError::reply(DELETE_USAGE).unless_noreply(noreply));
        }
    }
    if !key_ok(line.raw(1), limits) {
        return Err(LineError::reply(BAD_FORMAT).unless_noreply(noreply));
    }
    let command = Command::Delete {
        key: line.slice(1),
        noreply,
    };
    Ok(Parsed::Ready(Request::new(
        line.bytes.clone(),
        Bytes::new(),
        command,
    )))
}

/// `touch <key> <exptime> [noreply]`; 1.6.45 ignores later tokens.
fn parse_touch(line: &Line, limits: &Limits) -> Result<Parsed, LineError> {
    if line.len() < 3 {
        return Err(LineError::reply(BAD_FORMAT));
    }
    let noreply = line.ends_with_noreply();
    if !key_ok(line.raw(1), limits) {
        return Err(LineError::reply(BAD_FORMAT).unless_noreply(noreply));
    }
    let exptime = parse_i32_wrapping(line.raw(2))
        .ok_or_else(|| LineError::reply(BAD_EXPTIME).unless_noreply(noreply))?;
    let command = Command::Touch {
        key: line.slice(1),
        exptime,
        noreply,
    };
    Ok(Parsed::Ready(Request::new(
        line.bytes.clone(),
        Bytes::new(),
        command,
    )))
}

fn parse_meta(line: &Line, op: MetaOp, limits: &Limits) -> Result<Parsed, LineError> {
    let n = line.len();
    if n < 2 {
        // 1.6.45's parser (`_process_request_meta`) refuses a meta command
        // without a key; 1.6.18 answered `ERROR` (but for `me`).
        return Err(LineError::reply(BAD_FORMAT));
    }
    let wire_key = line.raw(1);
    if wire_key.len() > limits.max_key_len {
        return Err(LineError::reply(BAD_FORMAT));
    }
    if op == MetaOp::Debug {
        // `me <key> [b]`: a debugging aid with no other flags.
        let base64 = n > 2 && line.raw(2) == b"b";
        let key = meta_key(line, base64, limits).map_err(|_| LineError::reply(BAD_FORMAT))?;
        let flag_tokens = line.tokens[2..].iter().take(usize::from(base64));
        let spans = flag_tokens.map(|&(s, e)| (s as usize, e as usize));
        let flags =
            MetaFlags::parse(&line.bytes, spans).map_err(|e| LineError::reply(e.reply()))?;
        return Ok(meta_request(line, op, key, flags));
    }
    let (first_flag, value_len) = if op == MetaOp::Set {
        if n == 2 {
            return Err(LineError::reply(BAD_FORMAT));
        }
        let len = value_len(line.raw(2)).ok_or(LineError::reply(BAD_FORMAT))?;
        (3, Some(len))
    } else {
        (2, None)
    };
    if n >= META_MAX_TOKENS {
        return Err(LineError::reply(if op == MetaOp::Get {
            ErrorReply::GetOptionsTooLong.text()
        } else {
            ErrorReply::OptionsTooLong.text()
        }));
    }
    // From here on an `ms` error swallows the data block, as memcached does.
    let fail = |reply: &'static str| LineError::swallowing(reply, value_len.map_or(0, |l| l + 2));
    let spans = line.tokens[first_flag..]
        .iter()
        .map(|&(s, e)| (s as usize, e as usize));
    let flags = MetaFlags::parse(&line.bytes, spans).map_err(|e| {
        fail(match op {
            MetaOp::Delete | MetaOp::Arith => ErrorReply::InvalidOrDuplicateFlag.text(),
            _ => e.reply(),
        })
    })?;
    match (op, flags.mode) {
        (MetaOp::Set, Some(m)) if !b"EAPRS".contains(&m) => {
            return Err(fail(ErrorReply::BadSetMode.text()))
        }
        (MetaOp::Arith, Some(m)) if !b"ID+-".contains(&m) => {
            return Err(fail(ErrorReply::BadArithMode.text()))
        }
        _ => {}
    }
    let key = meta_key(line, flags.base64_key(), limits).map_err(|e| fail_with(e, &fail))?;
    let request = meta_request(line, op, key, flags);
    match value_len {
        None => Ok(request),
        Some(len) => {
            let Parsed::Ready(request) = request else {
                unreachable!("meta_request builds ready requests")
            };
            let key = request.key().cloned().unwrap_or_default();
            if !limits.item_fits(key.len(), len) {
                return Err(LineError {
                    error: ProtocolError::TooLarge {
                        key,
                        drops_existing: true,
                        silent: false,
                    },
                    swallow: len + 2,
                });
            }
            Ok(Parsed::NeedsData(request, len))
        }
    }
}

fn fail_with(e: LineError, fail: &impl Fn(&'static str) -> LineError) -> LineError {
    match e.error {
        ProtocolError::Reply(line) => fail(line),
        _ => e,
    }
}

fn meta_key(line: &Line, base64: bool, limits: &Limits) -> Result<Bytes, LineError> {
    let wire_key = line.raw(1);
    let key = if base64 {
        match base64_decode(wire_key) {
            Some(decoded) if !decoded.is_empty() => Bytes::from(decoded),
            _ => return Err(LineError::reply(ErrorReply::KeyDecode.text())),
        }
    } else {
        line.slice(1)
    };
    // Decoded binary keys may hold any byte; text keys follow the usual rule.
    let ok = if base64 {
        !key.is_empty() && key.len() <= limits.max_key_len
    } else {
        key_ok(&key, limits)
    };
    if !ok {
        return Err(LineError::reply(BAD_FORMAT));
    }
    Ok(key)
}

fn meta_request(line: &Line, op: MetaOp, key: Bytes, flags: MetaFlags) -> Parsed {
    let command = Command::Meta(Box::new(MetaCommand {
        op,
        key,
        wire_key: line.slice(1),
        flags,
    }));
    Parsed::Ready(Request::new(line.bytes.clone(), Bytes::new(), command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_key_gets_read_as_the_tokenizer_reads_them() {
        let tight = Limits {
            max_key_len: 4,
            ..Limits::default()
        };
        let no_keys = Limits {
            max_keys_per_get: 0,
            ..Limits::default()
        };
        let lines: [&[u8]; 14] = [
            b"get k",
            b"gets key1",
            b"get longkey",
            b"get  k",
            b"get k ",
            b"get a b",
            b"get k\x01",
            b"get k\x7f",
            b"get \xc3\xa9",
            b"get ",
            b"gets ",
            b"gat 1 k",
            b"getx k",
            b"get __mcrouter__.route(get,k)",
        ];
        let strict = Limits {
            allow_control_chars_in_keys: false,
            ..Limits::default()
        };
        let mut taken = 0;
        for limits in [Limits::default(), tight, no_keys, strict] {
            for line in lines {
                let bytes = Bytes::copy_from_slice(line);
                let fast = single_key_get(bytes.clone(), &limits);
                if let Ok(request) = &fast {
                    taken += 1;
                    let Ok(Parsed::Ready(general)) = parse_tokenized(bytes, &limits) else {
                        panic!("{line:?} refused by the tokenizer");
                    };
                    assert_eq!(request, &general, "{line:?}");
                }
            }
        }
        // The lines of one command, a space and a key the limits accept:
        // 7 by default (control characters allowed), 5 of up to 4 bytes,
        // none when no key is allowed, 5 without control characters.
        assert_eq!(taken, 7 + 5 + 5);
    }

    fn decode_all(input: &[u8]) -> Vec<Decoded> {
        let mut decoder = RequestDecoder::new(Limits::default());
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(d) = decoder.decode(&mut buf) {
            let close = matches!(d, Decoded::Error(ProtocolError::Close));
            out.push(d);
            if close {
                break;
            }
        }
        out
    }

    fn replies(input: &[u8]) -> Vec<String> {
        decode_all(input)
            .into_iter()
            .map(|d| match d {
                Decoded::Request(r) => format!("req:{}", r.command().name()),
                Decoded::Error(ProtocolError::Reply(l)) => l.to_string(),
                Decoded::Error(ProtocolError::Silent) => "silent".into(),
                Decoded::Error(ProtocolError::Close) => "close".into(),
                Decoded::Error(e @ ProtocolError::TooLarge { .. }) => {
                    e.reply_line().unwrap_or("silent").to_string()
                }
            })
            .collect()
    }

    #[test]
    fn a_line_holding_a_nul_byte_is_refused() {
        // Its data block is swallowed: the line after it is the next request.
        assert_eq!(
            replies(b"set a\x00b 0 0 9\r\nget nokey\r\nmn\r\n"),
            ["CLIENT_ERROR bad command line format", "req:mn"]
        );
        assert_eq!(
            replies(b"get a\x00b\r\nmg k v\x00\r\nset a 0 0 1 noreply\x00\r\nx\r\n"),
            [BAD_FORMAT, BAD_FORMAT, BAD_FORMAT]
        );
        // `noreply` hides the error; an incomplete line waits for its end.
        assert_eq!(replies(b"set a\x00 0 0 1 noreply\r\nx\r\n"), ["silent"]);
        let mut decoder = RequestDecoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"get a\x00b"[..]);
        assert!(decoder.decode(&mut buf).is_none());
        buf.extend_from_slice(b"\r\nmn\r\n");
        assert!(matches!(decoder.decode(&mut buf), Some(Decoded::Error(_))));
        assert!(matches!(
            decoder.decode(&mut buf),
            Some(Decoded::Request(_))
        ));
    }

    #[test]
    fn storage_with_value() {
        let d = decode_all(b"set k 1 2 3\r\nabc\r\n");
        let Decoded::Request(r) = &d[0] else { panic!() };
        let Command::Store(s) = r.command() else {
            panic!()
        };
        assert_eq!((&s.key[..], s.flags, s.exptime), (&b"k"[..], 1, 2));
        assert_eq!(&r.value()[..], b"abc");
        let mut out = BytesMut::new();
        r.encode(&mut out);
        assert_eq!(&out[..], b"set k 1 2 3\r\nabc\r\n");
    }

    #[test]
    fn value_split_across_reads() {
        let mut decoder = RequestDecoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"set k 0 0 5\r\nab"[..]);
        assert!(decoder.decode(&mut buf).is_none());
        assert!(decoder.is_mid_request());
        buf.extend_from_slice(b"cde\r");
        assert!(decoder.decode(&mut buf).is_none());
        buf.extend_from_slice(b"\n");
        let Some(Decoded::Request(r)) = decoder.decode(&mut buf) else {
            panic!()
        };
        assert_eq!(&r.value()[..], b"abcde");
        assert!(!decoder.is_mid_request());
    }

    #[test]
    fn memcached_error_replies() {
        assert_eq!(replies(b"foo\r\n"), ["ERROR"]);
        assert_eq!(replies(b"GET a\r\n"), ["ERROR"]);
        assert_eq!(replies(b"set a 0 0 -1\r\n"), [BAD_FORMAT]);
        assert_eq!(replies(b"set a 0 0 abc\r\nxx\r\n"), [BAD_FORMAT, "ERROR"]);
        assert_eq!(
            replies(b"set a 0 0 2\r\nxxxxxx\r\nget a\r\n"),
            [BAD_CHUNK, "ERROR", "req:get"]
        );
        assert_eq!(replies(b"set a 0 0 1\r\nx\r\n"), ["req:set"]);
        assert_eq!(replies(b"incr a abc\r\n"), [BAD_DELTA]);
        assert_eq!(replies(b"incr a -1\r\n"), [BAD_DELTA]);
        assert_eq!(replies(b"touch a abc\r\n"), [BAD_EXPTIME]);
        assert_eq!(replies(b"gat abc a\r\n"), [BAD_EXPTIME]);
        assert_eq!(
            replies(b"delete a 0\r\ndelete a noreply\r\n"),
            ["req:delete", "req:delete"]
        );
        assert_eq!(replies(b"verbosity abc\r\n"), [BAD_FORMAT]);
        assert_eq!(replies(b"flush_all abc\r\n"), [BAD_EXPTIME]);
        assert_eq!(replies(b"set a 0 0 01\r\nx\r\n"), ["req:set"]);
        let mut long_key = b"get ".to_vec();
        long_key.extend(std::iter::repeat_n(b'k', 251));
        long_key.extend_from_slice(b"\r\n");
        assert_eq!(replies(&long_key), [BAD_FORMAT]);
    }

    /// Where memcached 1.6.45 answers differently from 1.6.18 (the rules
    /// come from 1.6.45's proto_parser.c and proto_text.c).
    #[test]
    fn memcached_1_6_45_replies() {
        // Lines shorter than 4 bytes with their newline.
        assert_eq!(replies(b"\r\n"), [BAD_FORMAT]);
        assert_eq!(replies(b"\n"), [BAD_FORMAT]);
        assert_eq!(replies(b"mn\n"), [BAD_FORMAT]);
        assert_eq!(replies(b"mn\r\n"), ["req:mn"]);
        // Too few tokens is a format error, too many are ignored.
        for line in [&b"get"[..], b"gets", b"gat", b"gat 10", b"gats 10"] {
            assert_eq!(replies(&[line, b"\r\n"].concat()), [BAD_FORMAT]);
        }
        for line in [&b"set a 0 0"[..], b"cas", b"add a", b"incr a", b"touch a"] {
            assert_eq!(replies(&[line, b"\r\n"].concat()), [BAD_FORMAT]);
        }
        assert_eq!(replies(b"delete\r\n"), [BAD_FORMAT]);
        assert_eq!(replies(b"verbosity\r\n"), [BAD_FORMAT]);
        assert_eq!(replies(b"set a 0 0 1 2 3\r\nx\r\n"), ["req:set"]);
        assert_eq!(replies(b"incr a 1 noreply x\r\n"), ["req:incr"]);
        // A deliberate difference: memroute checks delete's later tokens as
        // 1.6.18 does (memccapable requires it); 1.6.45 ignores them.
        assert_eq!(replies(b"delete a 5\r\n"), [DELETE_USAGE]);
        assert_eq!(replies(b"delete a b c d e\r\n"), ["ERROR"]);
        assert_eq!(replies(b"flush_all 0 noreply x\r\n"), ["req:flush_all"]);
        // noreply is the last token, wherever it stands.
        let d = decode_all(b"set a 0 0 1 x noreply\r\nv\r\n");
        let Decoded::Request(r) = &d[0] else { panic!() };
        assert!(r.noreply());
        let d = decode_all(b"incr a 1 noreply 0\r\n");
        let Decoded::Request(r) = &d[0] else { panic!() };
        assert!(!r.noreply());
        // Lengths: token-bounded, no `+`, no `\r`, no wrapping; a refused
        // length shows its error even with noreply and swallows nothing.
        for len in [
            "+1",
            "1\r",
            "4294967297",
            "2147483646",
            "000000000001",
            "-1",
        ] {
            let line = format!("set a 0 0 {len}\r\nxx\r\n");
            assert_eq!(replies(line.as_bytes()), [BAD_FORMAT, "ERROR"], "{len:?}");
        }
        assert_eq!(replies(b"set a 0 0 -1 noreply\r\n"), [BAD_FORMAT]);
        assert_eq!(
            replies(b"set a 0 0 -\r\n\r\n"),
            ["req:set"],
            "a lone - is 0"
        );
        assert_eq!(replies(b"ms a +1\r\nxx\r\n"), [BAD_FORMAT, "ERROR"]);
        assert_eq!(replies(b"md\r\nma\r\nme\r\n"), [BAD_FORMAT; 3]);
        // Bad key, flags, exptime or compare value: the data block is
        // swallowed, and noreply hides the error.
        let mut long_key = b"set ".to_vec();
        long_key.extend(std::iter::repeat_n(b'k', 251));
        long_key.extend_from_slice(b" 0 0 1\r\nx\r\nmn\r\n");
        assert_eq!(replies(&long_key), [BAD_FORMAT, "req:mn"]);
        for line in [
            &b"set a -1 0 2\r\nxx\r\n"[..],
            b"set c 0x1 0 1\r\nx\r\n",
            b"add a 0 abc 1\r\nx\r\n",
            b"cas a 0 0 1\r\nx\r\n",
            b"cas a 0 0 1 +1\r\nx\r\n",
            b"cas a 0 0 1 -0\r\nx\r\n",
        ] {
            assert_eq!(replies(&[line, b"mn\r\n"].concat()), [BAD_FORMAT, "req:mn"]);
        }
        assert_eq!(
            replies(b"cas a 0 0 1 noreply\r\nx\r\nmn\r\n"),
            ["silent", "req:mn"]
        );
        assert_eq!(
            replies(b"set a 0 0 1 noreply\r\nxyz\r\n"),
            ["silent", BAD_FORMAT]
        );
        // Other numbers read token-bounded.
        assert_eq!(replies(b"gat 4294967296 a\r\n"), [BAD_EXPTIME]);
        assert_eq!(replies(b"flush_all +1\r\n"), [BAD_EXPTIME]);
        assert_eq!(replies(b"verbosity 4294967296\r\n"), [BAD_FORMAT]);
        assert_eq!(
            replies(b"shutdown\r\n"),
            ["SERVER_ERROR: shutdown not enabled"]
        );
    }

    #[test]
    fn http_request_lines_close() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /submit HTTP/1.0\r\n",
            b"PUT /asdf/asd/fasdfasdf/sadf HTTP/1.1\r\n",
            b"DELETE HTTP/1.1\r\n",
            b"gxx / HTTP/1.1\r\n",
            b"mx / HTTP/2\r\n",
            b"GET / HTTP/\n",
        ] {
            assert_eq!(
                replies(line),
                ["close"],
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        // The rest of the pipeline is never read.
        assert_eq!(replies(b"GET / HTTP/1.1\r\nmn\r\n"), ["close"]);
        // Known commands and other unknown lines are not HTTP.
        assert_eq!(replies(b"get / HTTP/1.1\r\n"), ["req:get"]);
        assert_eq!(replies(b"delete / HTTP/1.1\r\n"), [DELETE_USAGE]);
        assert_eq!(replies(b"mn / HTTP/1.1\r\n"), ["req:mn"]);
        assert_eq!(replies(b"set / HTTP/1.1\r\n"), [BAD_FORMAT]);
        assert_eq!(
            replies(b"HTTP/1.1\r\n"),
            ["ERROR"],
            "one token is not enough"
        );
        assert_eq!(replies(b"GET / http/1.1\r\n"), ["ERROR"]);
        assert_eq!(replies(b"GET HTTP/1.1 /\r\n"), ["ERROR"]);
        assert_eq!(replies(b"GET / HTTP\r\n"), ["ERROR"]);
        // Memcached's other text commands (matched by prefix) are not HTTP.
        assert_eq!(replies(b"lru / HTTP/1.1\r\n"), ["ERROR"]);
        assert_eq!(replies(b"watch HTTP/1.1\r\n"), ["req:watch"]);
        // Only the tokens memcached keeps (23) count.
        let mut long = b"GET".to_vec();
        for _ in 0..21 {
            long.extend_from_slice(b" x");
        }
        assert_eq!(replies(&[&long[..], b" HTTP/1.1\r\n"].concat()), ["close"]);
        assert_eq!(
            replies(&[&long[..], b" x HTTP/1.1\r\n"].concat()),
            ["ERROR"]
        );
    }

    #[test]
    fn oversized_value_is_swallowed() {
        let mut input = b"set a 0 0 2000000\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 2_000_000));
        input.extend_from_slice(b"\r\nget a\r\n");
        assert_eq!(replies(&input), [TOO_LARGE, "req:get"]);
        // The exact boundary memcached has with its 56-byte item header.
        let fits = |n: usize| {
            let mut i = format!("set a 0 0 {n}\r\n").into_bytes();
            i.extend(std::iter::repeat_n(b'x', n));
            i.extend_from_slice(b"\r\n");
            replies(&i) == ["req:set"]
        };
        assert!(fits(1_048_516));
        assert!(!fits(1_048_517));
    }

    #[test]
    fn long_line_without_newline_closes() {
        assert_eq!(replies(&[b'x'; 3000]), ["close"]);
        let mut get = b"get ".to_vec();
        get.extend(std::iter::repeat_n(b'k', 3000));
        assert!(replies(&get).is_empty(), "multi-get lines may be long");
    }

    #[test]
    fn tokens_and_noreply() {
        assert_eq!(replies(b"  get  a   b\r\n"), ["req:get"]);
        assert_eq!(
            replies(b"get a\nset b 0 0 1\nx\r\n"),
            ["req:get", "req:set"]
        );
        let d = decode_all(b"set a 0 0 1 garbage\r\nx\r\n");
        let Decoded::Request(r) = &d[0] else { panic!() };
        assert!(!r.noreply());
        let many = b"set a 0 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22\r\nx\r\n";
        assert_eq!(replies(many), ["req:set"], "1.6.45 ignores extra tokens");
    }

    #[test]
    fn meta_commands() {
        let d = decode_all(b"mg foo v f t s c k O123\r\n");
        let Decoded::Request(r) = &d[0] else { panic!() };
        let Command::Meta(m) = r.command() else {
            panic!()
        };
        assert_eq!(m.op, MetaOp::Get);
        assert_eq!(&m.key[..], b"foo");
        assert_eq!(m.flags.len(), 7);
        assert_eq!(replies(b"mg\r\n"), [BAD_FORMAT]);
        assert_eq!(replies(b"mg foo zz\r\n"), ["CLIENT_ERROR invalid flag"]);
        assert_eq!(
            replies(b"mg a v O12 O13\r\n"),
            ["CLIENT_ERROR duplicate flag"]
        );
        assert_eq!(
            replies(b"md a zz\r\n"),
            ["CLIENT_ERROR invalid or duplicate flag"]
        );
        assert_eq!(replies(b"ms a\r\n"), [BAD_FORMAT]);
        assert_eq!(replies(b"ms a S1 T0\r\nxx\r\n"), [BAD_FORMAT, "ERROR"]);
        assert_eq!(
            replies(b"ms a 2 zz\r\nhi\r\nmn\r\n"),
            ["CLIENT_ERROR invalid flag", "req:mn"]
        );
        assert_eq!(
            replies(b"ms a 2 MX\r\nhi\r\n"),
            ["CLIENT_ERROR invalid mode for ms M token"]
        );
        assert_eq!(
            replies(b"ma a MX\r\n"),
            ["CLIENT_ERROR invalid mode for ma M token"]
        );
        let d = decode_all(b"ms YWJj 1 b\r\nz\r\n");
        let Decoded::Request(r) = &d[0] else { panic!() };
        let Command::Meta(m) = r.command() else {
            panic!()
        };
        assert_eq!((&m.key[..], &m.wire_key[..]), (&b"abc"[..], &b"YWJj"[..]));
        assert_eq!(&r.value()[..], b"z");
        assert_eq!(
            replies(b"mg !!!! b\r\n"),
            ["CLIENT_ERROR error decoding key"]
        );
    }
}
