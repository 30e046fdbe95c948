//! The client side of the protocol: parsing a backend's reply.
//!
//! A reply can only be framed knowing the request it answers (a `get`
//! ends at `END`, `stats` at `END` after `STAT` lines, `mg ... v` carries a
//! data block, `set` is one line), so [`ResponseDecoder`] is built from the
//! [`Request`]. The whole reply is kept as one zero-copy [`Bytes`] so a
//! proxy can relay it to the client unchanged.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

use crate::number::parse_u64;
use crate::request::{Command, MetaOp, Request};

/// What kind of reply a backend sent (memcached proxy's `MCMC_CODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseCode {
    /// A retrieval reply with at least one `VALUE` block.
    Value,
    /// `END`: a retrieval miss (or the end of `stats`).
    End,
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    Ok,
    /// The decimal result of `incr`/`decr`.
    Number,
    Version,
    /// `STAT` lines ended by `END`.
    Stat,
    /// Meta `HD`.
    Hd,
    /// Meta `VA`.
    Va,
    /// Meta `EN`.
    En,
    /// Meta `NF`.
    Nf,
    /// Meta `NS`.
    Ns,
    /// Meta `EX`.
    Ex,
    /// Meta `MN`.
    Mn,
    /// Meta `ME` (debug).
    Me,
    Error,
    ClientError,
    ServerError,
}

impl ResponseCode {
    /// Whether this is an error reply (`ERROR`, `CLIENT_ERROR`,
    /// `SERVER_ERROR`).
    pub fn is_error(self) -> bool {
        matches!(
            self,
            ResponseCode::Error | ResponseCode::ClientError | ResponseCode::ServerError
        )
    }
}

/// One complete backend reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    raw: Bytes,
    code: ResponseCode,
    line_len: usize,
    value: Option<Range<usize>>,
    hit: bool,
}

impl Response {
    pub fn code(&self) -> ResponseCode {
        self.code
    }
    /// A one-line reply made up by the proxy itself (for example
    /// `SERVER_ERROR backend failure`); `line` is without `\r\n`.
    pub fn from_line(line: &str) -> Response {
        let mut raw = BytesMut::with_capacity(line.len() + 2);
        raw.extend_from_slice(line.as_bytes());
        raw.extend_from_slice(b"\r\n");
        let bytes = line.as_bytes();
        let code = error_code(bytes)
            .or_else(|| line_code(bytes))
            .or_else(|| meta_code(bytes))
            .unwrap_or(ResponseCode::ServerError);
        Response {
            raw: raw.freeze(),
            code,
            line_len: line.len(),
            value: None,
            hit: false,
        }
    }

    /// A reply memroute encoded itself (a typed reply of the embedded cache
    /// or a store), framed as it was written: its code, the length of its
    /// first line (without `\r\n`), where its first value lies and whether
    /// it found an item are known, so nothing is parsed back.
    pub fn encoded(
        raw: Bytes,
        code: ResponseCode,
        line_len: usize,
        value: Option<Range<usize>>,
        hit: bool,
    ) -> Response {
        Response {
            raw,
            code,
            line_len,
            value,
            hit,
        }
    }

    /// The whole reply as received, ready to relay.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
    /// The whole reply, taken without cloning its bytes (the first clone
    /// of a freshly received reply allocates).
    pub fn into_raw(self) -> Bytes {
        self.raw
    }
    /// The first line without `\r\n`.
    pub fn line(&self) -> &[u8] {
        &self.raw[..self.line_len]
    }
    /// Overwrites `range` of the first line with spaces, as memcached's
    /// proxy blanks a return flag out of a meta reply (`res:flag_blank`):
    /// the reply keeps its length, so its framing and value stay as they
    /// are. A range reaching past the first line is cut to it.
    pub fn blank_in_line(&mut self, range: Range<usize>) {
        let end = range.end.min(self.line_len);
        if range.start >= end {
            return;
        }
        let mut raw = BytesMut::from(&self.raw[..]);
        raw[range.start..end].fill(b' ');
        self.raw = raw.freeze();
    }
    /// The data of the first value, if the reply carried one.
    pub fn value(&self) -> Option<&[u8]> {
        self.value.clone().map(|r| &self.raw[r])
    }
    /// Whether the reply found an item: `VALUE`, `VA`, or `HD` to an `mg`
    /// (which answers `HD` for a hit when no value was asked for).
    pub fn is_hit(&self) -> bool {
        self.hit
    }
    /// Whether the backend processed the request (anything but an error).
    pub fn is_ok(&self) -> bool {
        !self.code.is_error()
    }
}

impl Response {
    /// The keys of the `VALUE` blocks of a retrieval reply, in order.
    pub fn value_keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut pos = 0;
        std::iter::from_fn(move || {
            let rest = self.raw.get(pos..)?;
            match retrieval_head(rest).ok()?? {
                RetrievalHead::Value { header, size } => {
                    let key = Response::value_line_key(&rest[..header])?;
                    pos += header + size + 2;
                    Some(key)
                }
                _ => None,
            }
        })
    }
}

impl Response {
    /// `END`: the reply to a retrieval that found nothing.
    pub fn miss() -> Response {
        Response {
            raw: Bytes::from_static(b"END\r\n"),
            code: ResponseCode::End,
            line_len: 3,
            value: None,
            hit: false,
        }
    }

    /// The key of a `VALUE` reply.
    pub fn retrieval_key(&self) -> Option<&[u8]> {
        Response::value_line_key(self.line())
    }

    /// The key named by a `VALUE` header line.
    pub fn value_line_key(line: &[u8]) -> Option<&[u8]> {
        let mut rest = line.strip_prefix(b"VALUE ")?;
        // The first token between spaces, `\r` and `\n`, found with memchr:
        // a VALUE line is mostly its key, too long to walk byte by byte on
        // every reply.
        loop {
            let end = memchr::memchr3(b' ', b'\r', b'\n', rest).unwrap_or(rest.len());
            if end > 0 {
                return Some(&rest[..end]);
            }
            rest = rest.get(1..)?;
        }
    }
}

/// One piece of the reply to a multi-key `get`/`gets`, for a backend
/// connection that joined single-key requests into one line and must hand
/// each its own reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetrievalPiece {
    /// A `VALUE` block, as the complete reply a single-key request for its
    /// key gets (the block, then `END`); the key is
    /// [`Response::retrieval_key`].
    Value(Response),
    /// `END`: every key not answered yet is a miss.
    End,
    /// An error line, which ends the reply for every key not answered yet.
    Error(Response),
}

/// Takes one [`RetrievalPiece`] from the front of `buf`; `Ok(None)` means
/// more bytes are needed (nothing is consumed).
pub fn decode_retrieval_piece(
    buf: &mut BytesMut,
) -> Result<Option<RetrievalPiece>, MalformedResponse> {
    match retrieval_head(buf)? {
        Some(head) => take_retrieval_piece(buf, head, &mut BytesMut::new()),
        None => Ok(None),
    }
}

/// Takes the piece whose head [`retrieval_head`] just read at the front of
/// `buf` (so its header line is not parsed twice); `Ok(None)` until a
/// value's data block has all arrived (nothing is consumed).
///
/// A value's block is copied, with `END` after it, into `pieces` and split
/// off it. A reader that keeps `pieces` from one piece to the next (made
/// with some capacity, say 8 KiB) copies many pieces into one allocation
/// shared by their replies, so a piece costs a reference count rather than
/// a `malloc` and a `free` of its own (a proxied get costs about 240
/// instructions less, docs/benchmarks.md, run 27); the allocation is freed, or reused,
/// once the last of them is dropped.
pub fn take_retrieval_piece(
    buf: &mut BytesMut,
    head: RetrievalHead,
    pieces: &mut BytesMut,
) -> Result<Option<RetrievalPiece>, MalformedResponse> {
    match head {
        RetrievalHead::End { len } => {
            buf.advance(len);
            Ok(Some(RetrievalPiece::End))
        }
        RetrievalHead::Error { len } => {
            let line_len = trim_cr(buf, len - 1);
            let code = error_code(&buf[..line_len]).unwrap_or(ResponseCode::ServerError);
            Ok(Some(RetrievalPiece::Error(take(
                buf, len, code, line_len, None,
            ))))
        }
        RetrievalHead::Value { header, size } => {
            let stop = header + size + 2;
            if buf.len() < stop {
                return Ok(None);
            }
            if &buf[header + size..stop] != b"\r\n" {
                return Err(MalformedResponse("VALUE data not terminated"));
            }
            // (`pieces` holds nothing: every piece is split off whole.)
            pieces.reserve(stop + 5);
            pieces.extend_from_slice(&buf[..stop]);
            pieces.extend_from_slice(b"END\r\n");
            let raw = pieces.split().freeze();
            let line_len = trim_cr(buf, header - 1);
            buf.advance(stop);
            Ok(Some(RetrievalPiece::Value(Response {
                raw,
                code: ResponseCode::Value,
                line_len,
                value: Some(header..header + size),
                hit: true,
            })))
        }
    }
}

/// The head of the next piece of a `get` reply at the front of a buffer,
/// read without consuming anything (see [`retrieval_head`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrievalHead {
    /// `END`; `len` counts its line with `\r\n`.
    End { len: usize },
    /// An error line, which ends the reply; `len` counts it with `\r\n`.
    Error { len: usize },
    /// A `VALUE` header line of `header` bytes (with `\r\n`), followed by
    /// `size` bytes of data and `\r\n`.
    Value { header: usize, size: usize },
}

impl RetrievalHead {
    /// Bytes of the whole piece: the line, and for a value its data block.
    pub fn piece_len(self) -> usize {
        match self {
            RetrievalHead::End { len } | RetrievalHead::Error { len } => len,
            RetrievalHead::Value { header, size } => header.saturating_add(size).saturating_add(2),
        }
    }
}

/// Reads the head of the next piece of a `get` reply at the front of `buf`
/// (only its first line need have arrived); `Ok(None)` until that line is
/// complete. A proxy uses it to see a value's size before buffering it.
pub fn retrieval_head(buf: &[u8]) -> Result<Option<RetrievalHead>, MalformedResponse> {
    let Some(end) = memchr::memchr(b'\n', buf) else {
        return Ok(None);
    };
    let line = &buf[..trim_cr(buf, end)];
    if error_code(line).is_some() {
        return Ok(Some(RetrievalHead::Error { len: end + 1 }));
    }
    if line == b"END" {
        return Ok(Some(RetrievalHead::End { len: end + 1 }));
    }
    if !line.starts_with(b"VALUE ") {
        return Err(MalformedResponse("unexpected line in multi-key reply"));
    }
    // (After `VALUE `: the key, the flags, then the size.)
    let (size, _) = nth_token(&line[b"VALUE ".len()..], 2)
        .and_then(|t| data_end(t, end + 1))
        .ok_or(MalformedResponse("bad VALUE line"))?;
    Ok(Some(RetrievalHead::Value {
        header: end + 1,
        size,
    }))
}

/// A data block larger than a proxy will hold, found in the reply at the
/// front of a buffer (see [`ResponseDecoder::find_oversize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversize {
    /// Bytes of complete value blocks before it (a multi-key reply's
    /// values that fit).
    pub prefix: usize,
    /// Bytes of its header line, from `prefix`.
    pub header: usize,
    /// Its data size (its block is `header + size + 2` bytes).
    pub size: usize,
    /// Whether more pieces of the same reply may follow it (a `get`
    /// reply continues to `END`; a meta `VA` reply is over).
    pub more: bool,
}

/// A reply that does not fit the protocol: the proxy must drop the backend
/// connection (it can no longer tell where replies start) and answer
/// `SERVER_ERROR bad response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedResponse(pub &'static str);

impl std::fmt::Display for MalformedResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed backend response: {}", self.0)
    }
}

impl std::error::Error for MalformedResponse {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `VALUE` blocks then `END`.
    Retrieval,
    /// `STAT` lines then `END`.
    Stats,
    /// One meta line, possibly `VA` with a data block.
    Meta,
    /// One line.
    Line,
}

/// Frames the reply to one request.
#[derive(Debug, Clone, Copy)]
pub struct ResponseDecoder {
    shape: Shape,
    meta_get: bool,
}

impl ResponseDecoder {
    /// A decoder for the reply to `request`.
    pub fn for_request(request: &Request) -> Self {
        let shape = match request.command() {
            Command::Get(_) => Shape::Retrieval,
            Command::Stats { .. } => Shape::Stats,
            Command::Meta(m) if m.op != MetaOp::Debug => Shape::Meta,
            Command::MetaNoop => Shape::Meta,
            _ => Shape::Line,
        };
        let meta_get = matches!(request.command(), Command::Meta(m) if m.op == MetaOp::Get);
        ResponseDecoder { shape, meta_get }
    }

    /// Takes one complete reply from the front of `buf`; `Ok(None)` means
    /// more bytes are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Response>, MalformedResponse> {
        let Some(first_end) = memchr::memchr(b'\n', buf) else {
            return Ok(None);
        };
        let line_len = trim_cr(buf, first_end);
        let first = &buf[..line_len];
        if let Some(code) = error_code(first) {
            return Ok(Some(take(buf, first_end + 1, code, line_len, None)));
        }
        match self.shape {
            Shape::Line => {
                let code = line_code(first).ok_or(MalformedResponse("unexpected reply line"))?;
                Ok(Some(take(buf, first_end + 1, code, line_len, None)))
            }
            Shape::Meta => {
                let code = meta_code(first).ok_or(MalformedResponse("unexpected meta reply"))?;
                if code != ResponseCode::Va {
                    let mut response = take(buf, first_end + 1, code, line_len, None);
                    response.hit = self.meta_get && code == ResponseCode::Hd;
                    return Ok(Some(response));
                }
                // `VA` alone has no size; a size too large to address is as
                // malformed as a missing one (and must not overflow below).
                let start = first_end + 1;
                let size = first
                    .get(3..)
                    .and_then(|rest| rest.split(|&b| b == b' ').next());
                let Some((size, total)) =
                    data_block(size, buf, start, ["bad VA size", "VA data not terminated"])?
                else {
                    return Ok(None);
                };
                Ok(Some(take(
                    buf,
                    total,
                    code,
                    line_len,
                    Some(start..start + size),
                )))
            }
            Shape::Retrieval | Shape::Stats => self.decode_multi_line(buf),
        }
    }

    /// The first value block larger than `cap` bytes in the reply at the
    /// front of `buf`, found from headers alone (its data need not have
    /// arrived); `None` if none has shown up yet. Malformed replies are
    /// left to [`decode`](Self::decode) to report.
    pub fn find_oversize(&self, buf: &[u8], cap: usize) -> Option<Oversize> {
        match self.shape {
            Shape::Retrieval => {
                let mut pos = 0;
                while pos < buf.len() {
                    match retrieval_head(&buf[pos..]).ok()?? {
                        RetrievalHead::Value { header, size } if size > cap => {
                            return Some(Oversize {
                                prefix: pos,
                                header,
                                size,
                                more: true,
                            })
                        }
                        RetrievalHead::Value { header, size } => {
                            pos = pos.checked_add(header)?.checked_add(size)?.checked_add(2)?
                        }
                        RetrievalHead::End { .. } | RetrievalHead::Error { .. } => return None,
                    }
                }
                None
            }
            Shape::Meta => {
                let end = memchr::memchr(b'\n', buf)?;
                let line = &buf[..trim_cr(buf, end)];
                let size = line.strip_prefix(b"VA ")?.split(|&b| b == b' ').next()?;
                let size = usize::try_from(parse_u64(size)?).ok()?;
                (size > cap).then_some(Oversize {
                    prefix: 0,
                    header: end + 1,
                    size,
                    more: false,
                })
            }
            Shape::Stats | Shape::Line => None,
        }
    }

    /// Whether this decoder frames a retrieval (`get`-family) reply.
    pub fn is_retrieval(&self) -> bool {
        self.shape == Shape::Retrieval
    }

    fn decode_multi_line(&self, buf: &mut BytesMut) -> Result<Option<Response>, MalformedResponse> {
        let mut pos = 0;
        let mut first_value: Option<Range<usize>> = None;
        let mut first_line_len = None;
        loop {
            let Some(rel) = memchr::memchr(b'\n', &buf[pos..]) else {
                return Ok(None);
            };
            let end = pos + rel;
            let len = trim_cr(buf, end) - pos;
            let line = &buf[pos..pos + len];
            first_line_len.get_or_insert(len);
            if line == b"END" {
                let code = match (self.shape, &first_value) {
                    (Shape::Retrieval, Some(_)) => ResponseCode::Value,
                    (Shape::Stats, _) if pos > 0 => ResponseCode::Stat,
                    _ => ResponseCode::End,
                };
                let line_len = first_line_len.unwrap_or(len);
                return Ok(Some(take(buf, end + 1, code, line_len, first_value)));
            }
            if pos > 0 && error_code(line).is_some() {
                // An error in the middle of a reply (e.g. SERVER_ERROR
                // out of memory writing get response) ends it.
                let line_len = first_line_len.unwrap_or(len);
                return Ok(Some(take(
                    buf,
                    end + 1,
                    ResponseCode::ServerError,
                    line_len,
                    None,
                )));
            }
            match self.shape {
                Shape::Stats if line.starts_with(b"STAT ") => pos = end + 1,
                Shape::Retrieval if line.starts_with(b"VALUE ") => {
                    let start = end + 1;
                    let Some((size, stop)) = value_block(line, buf, start)? else {
                        return Ok(None);
                    };
                    first_value.get_or_insert(start..start + size);
                    pos = stop;
                }
                _ => return Err(MalformedResponse("unexpected line in multi-line reply")),
            }
        }
    }
}

/// The data block of the `VALUE` line `line`, starting at `start` in
/// `buf`: its size and the offset just past its `\r\n`; `Ok(None)` until it
/// has all arrived.
fn value_block(
    line: &[u8],
    buf: &[u8],
    start: usize,
) -> Result<Option<(usize, usize)>, MalformedResponse> {
    data_block(
        nth_token(line, 3),
        buf,
        start,
        ["bad VALUE line", "VALUE data not terminated"],
    )
}

/// A data block of `size` (the size token of its header line, if any)
/// starting at `start` in `buf`: its size and the offset just past its
/// `\r\n`; `Ok(None)` until it has all arrived. `errors` name a bad size
/// and a missing `\r\n` after the data.
fn data_block(
    size: Option<&[u8]>,
    buf: &[u8],
    start: usize,
    errors: [&'static str; 2],
) -> Result<Option<(usize, usize)>, MalformedResponse> {
    let (size, stop) = size
        .and_then(|t| data_end(t, start))
        .ok_or(MalformedResponse(errors[0]))?;
    if buf.len() < stop {
        return Ok(None);
    }
    if &buf[start + size..stop] != b"\r\n" {
        return Err(MalformedResponse(errors[1]));
    }
    Ok(Some((size, stop)))
}

/// Parses a data block size and returns it with the offset just past the
/// block's `\r\n`, for a block starting at `start`; `None` if the size is
/// not a number or the end does not fit in `usize`.
fn data_end(size: &[u8], start: usize) -> Option<(usize, usize)> {
    let size = usize::try_from(parse_u64(size)?).ok()?;
    Some((size, start.checked_add(size)?.checked_add(2)?))
}

/// The `n`th token of `line` (from 0), tokens being separated by runs of
/// spaces (see [`token_end`](crate::decode::token_end): a `VALUE` line is
/// mostly its key).
fn nth_token(line: &[u8], n: usize) -> Option<&[u8]> {
    let mut rest = line;
    let mut index = 0;
    loop {
        let start = rest.iter().position(|&b| b != b' ')?;
        rest = &rest[start..];
        let end = crate::decode::token_end(rest);
        if index == n {
            return Some(&rest[..end]);
        }
        rest = &rest[end..];
        index += 1;
    }
}

fn trim_cr(buf: &[u8], newline: usize) -> usize {
    if newline > 0 && buf[newline - 1] == b'\r' {
        newline - 1
    } else {
        newline
    }
}

fn take(
    buf: &mut BytesMut,
    len: usize,
    code: ResponseCode,
    line_len: usize,
    value: Option<Range<usize>>,
) -> Response {
    Response {
        raw: crate::limits::take_frame(buf, len),
        code,
        line_len,
        value,
        hit: matches!(code, ResponseCode::Value | ResponseCode::Va),
    }
}

fn error_code(line: &[u8]) -> Option<ResponseCode> {
    if line == b"ERROR" || line.starts_with(b"ERROR ") {
        Some(ResponseCode::Error)
    } else if line.starts_with(b"CLIENT_ERROR") {
        Some(ResponseCode::ClientError)
    } else if line.starts_with(b"SERVER_ERROR") {
        Some(ResponseCode::ServerError)
    } else {
        None
    }
}

fn line_code(line: &[u8]) -> Option<ResponseCode> {
    Some(match line {
        b"STORED" => ResponseCode::Stored,
        b"NOT_STORED" => ResponseCode::NotStored,
        b"EXISTS" => ResponseCode::Exists,
        b"NOT_FOUND" => ResponseCode::NotFound,
        b"DELETED" => ResponseCode::Deleted,
        b"TOUCHED" => ResponseCode::Touched,
        b"OK" => ResponseCode::Ok,
        b"END" => ResponseCode::End,
        _ if line.starts_with(b"VERSION ") => ResponseCode::Version,
        _ if line.starts_with(b"ME ") => ResponseCode::Me,
        _ if line == b"EN" => ResponseCode::En,
        _ if !line.is_empty() && line.iter().all(u8::is_ascii_digit) => ResponseCode::Number,
        _ => return None,
    })
}

fn meta_code(line: &[u8]) -> Option<ResponseCode> {
    if line.len() < 2 || (line.len() > 2 && line[2] != b' ') {
        return None;
    }
    Some(match &line[..2] {
        b"HD" => ResponseCode::Hd,
        b"VA" => ResponseCode::Va,
        b"EN" => ResponseCode::En,
        b"NF" => ResponseCode::Nf,
        b"NS" => ResponseCode::Ns,
        b"EX" => ResponseCode::Ex,
        b"MN" => ResponseCode::Mn,
        b"ME" => ResponseCode::Me,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decoded, Limits, RequestDecoder};

    fn request(line: &[u8]) -> Request {
        let mut buf = BytesMut::from(line);
        match RequestDecoder::new(Limits::default()).decode(&mut buf) {
            Some(Decoded::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn parse(req: &[u8], reply: &[u8]) -> Result<Option<Response>, MalformedResponse> {
        let d = ResponseDecoder::for_request(&request(req));
        d.decode(&mut BytesMut::from(reply))
    }

    #[test]
    fn retrieval_replies() {
        let r = parse(
            b"get a b\r\n",
            b"VALUE a 1 2\r\nhi\r\nVALUE b 0 0\r\n\r\nEND\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.code(), ResponseCode::Value);
        assert_eq!(r.value(), Some(&b"hi"[..]));
        assert_eq!(r.line(), b"VALUE a 1 2");
        assert!(r.is_hit());
        let miss = parse(b"get a\r\n", b"END\r\n").unwrap().unwrap();
        assert_eq!(miss.code(), ResponseCode::End);
        assert!(!miss.is_hit() && miss.is_ok());
        // Incomplete at every split point.
        let full = b"VALUE a 1 2\r\nhi\r\nEND\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(b"get a\r\n", &full[..cut]), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn line_and_meta_replies() {
        let r = parse(b"set a 0 0 1\r\nx\r\n", b"STORED\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.code(), ResponseCode::Stored);
        let r = parse(b"incr a 1\r\n", b"42\r\n").unwrap().unwrap();
        assert_eq!(r.code(), ResponseCode::Number);
        let r = parse(b"mg a v\r\n", b"VA 2 f0\r\nhi\r\n").unwrap().unwrap();
        assert_eq!((r.code(), r.value()), (ResponseCode::Va, Some(&b"hi"[..])));
        let r = parse(b"mg a v\r\n", b"EN\r\n").unwrap().unwrap();
        assert_eq!(r.code(), ResponseCode::En);
        let r = parse(b"set a 0 0 1\r\nx\r\n", b"SERVER_ERROR out of memory\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.is_ok());
        assert!(parse(b"set a 0 0 1\r\nx\r\n", b"BOGUS\r\n").is_err());
        let r = parse(b"stats\r\n", b"STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.code(), ResponseCode::Stat);
    }

    #[test]
    fn retrieval_pieces_split_a_multi_key_reply_per_key() {
        let wire: &[u8] = b"VALUE a 1 2\r\nxy\r\nVALUE b 0 0 77\r\n\r\nEND\r\nrest";
        let mut buf = BytesMut::from(wire);
        let single = ResponseDecoder::for_request(&request(b"get a\r\n"));
        let Some(RetrievalPiece::Value(a)) = decode_retrieval_piece(&mut buf).unwrap() else {
            panic!("a")
        };
        assert_eq!(a.retrieval_key(), Some(&b"a"[..]));
        // exactly what a single-key get for it would have been answered
        let mut alone = BytesMut::from(&b"VALUE a 1 2\r\nxy\r\nEND\r\n"[..]);
        assert_eq!(Some(a), single.decode(&mut alone).unwrap());
        let Some(RetrievalPiece::Value(b)) = decode_retrieval_piece(&mut buf).unwrap() else {
            panic!("b")
        };
        assert_eq!(b.retrieval_key(), Some(&b"b"[..]));
        assert_eq!(b.value(), Some(&b""[..]));
        assert_eq!(b.raw().as_ref(), b"VALUE b 0 0 77\r\n\r\nEND\r\n");
        assert_eq!(
            decode_retrieval_piece(&mut buf).unwrap(),
            Some(RetrievalPiece::End)
        );
        assert_eq!(&buf[..], b"rest");
        assert_eq!(Response::miss().raw().as_ref(), b"END\r\n");
        assert_eq!(Response::miss().code(), ResponseCode::End);
    }

    #[test]
    fn retrieval_pieces_copied_into_one_shared_buffer_keep_their_bytes() {
        let mut pieces = BytesMut::with_capacity(64);
        let mut kept = Vec::new();
        // More pieces than fit in one buffer: later ones go to a new one
        // while the first buffer is still held by earlier replies.
        for i in 0..20u8 {
            let key = [b'a' + i];
            let mut wire = BytesMut::new();
            wire.extend_from_slice(b"VALUE ");
            wire.extend_from_slice(&key);
            wire.extend_from_slice(b" 0 3\r\nxyz\r\nVALUE");
            let head = retrieval_head(&wire).unwrap().unwrap();
            let Some(RetrievalPiece::Value(value)) =
                take_retrieval_piece(&mut wire, head, &mut pieces).unwrap()
            else {
                panic!("value {i}")
            };
            assert_eq!(&wire[..], b"VALUE", "only the piece is consumed");
            assert!(pieces.is_empty());
            kept.push((key, value));
            if i % 3 == 0 {
                // Replies dropped early let their buffer be reused.
                kept.remove(0);
            }
        }
        for (key, value) in &kept {
            let mut want = b"VALUE ".to_vec();
            want.extend_from_slice(key);
            want.extend_from_slice(b" 0 3\r\nxyz\r\nEND\r\n");
            assert_eq!(value.raw().as_ref(), &want[..]);
            assert_eq!(value.retrieval_key(), Some(&key[..]));
            assert_eq!(value.value(), Some(&b"xyz"[..]));
        }
    }

    #[test]
    fn retrieval_piece_waits_for_whole_blocks_and_rejects_garbage() {
        for partial in [&b"VALUE a 0 5\r\nabc"[..], b"VALUE a 0 5", b"EN"] {
            let mut buf = BytesMut::from(partial);
            assert_eq!(decode_retrieval_piece(&mut buf).unwrap(), None);
            assert_eq!(&buf[..], partial, "nothing consumed");
        }
        let mut buf = BytesMut::from(&b"SERVER_ERROR out of memory\r\n"[..]);
        let Some(RetrievalPiece::Error(e)) = decode_retrieval_piece(&mut buf).unwrap() else {
            panic!("error line")
        };
        assert_eq!(e.code(), ResponseCode::ServerError);
        for bad in [
            &b"STORED\r\n"[..],
            b"VALUE a 0 x\r\n",
            b"VALUE a 0 1\r\nxyz\r\n",
        ] {
            assert!(
                decode_retrieval_piece(&mut BytesMut::from(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
