//! `route_bigvalue` (mcrouter's BigValueRoute): values larger than a
//! backend item may be, stored as chunk items plus an index item.
//!
//! This module owns the chunked-value layout and its reassembly. A store
//! whose value is over `threshold` bytes is cut into `chunk`-byte pieces,
//! each stored as its own item under `<key>:<index>:<generation>`; once
//! every piece is stored, the key itself is stored with the index
//! `1-<chunks>-<generation>` as its value and the client's flags with
//! [`BIG_VALUE_FLAG`] added. The layout is mcrouter's, so items written by
//! mcrouter's BigValueRoute read back through memroute and the other way
//! round.
//!
//! The generation is a random 64-bit number drawn per write, so two writes
//! of one key never share chunk keys: a reader that fetched an index reads
//! only that write's chunks, and if one of them is gone (evicted, expired,
//! a backend restarted) the read is a miss, never a mix of two writes; if
//! a chunk's server fails, the read answers that error. A
//! delete removes the index; the chunks it named are left to expire or be
//! evicted, as in mcrouter.
//!
//! What a client sees is a plain item: `get`/`gets`/`gat`/`gats`/`mg`
//! answer the whole value with the client's own flags (the marker bit
//! removed), the index's CAS (so `cas` works on big values) and TTL.
//! Values at or under the threshold pass through untouched.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use memroute_proto::{Command, Limits, MetaOp, Reply, Request, Response, Status, StoreOp};

use super::explain::{with_children, Step};
use super::handlers::Sampler;
use super::{ResponseFuture, Route};

/// The client-flags bit marking an index item (mcrouter's
/// `MC_MSG_FLAG_BIG_VALUE`). Clients of a `route_bigvalue` cannot store it
/// themselves: their stores with it are refused, so the bit never lies.
pub const BIG_VALUE_FLAG: u32 = 0x8000;

/// The index layout's version, the first number of an index value.
const INDEX_VERSION: u32 = 1;

/// Most chunks an index may name: a damaged index cannot make one read
/// send millions of requests.
pub const MAX_CHUNKS: u32 = 100_000;

/// Longest key memcached takes; chunk keys must fit in it.
const MAX_KEY_LEN: usize = memroute_proto::KEY_MAX_LENGTH;

/// What an index item says: how many chunks, and the write's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkIndex {
    pub chunks: u32,
    pub generation: u64,
}

impl ChunkIndex {
    /// Reads an index value (`1-<chunks>-<generation>`, all decimal);
    /// anything else, or an implausible count, is `None`.
    pub fn parse(value: &[u8]) -> Option<ChunkIndex> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.split('-');
        let version: u32 = parts.next()?.parse().ok()?;
        let chunks: u32 = parts.next()?.parse().ok()?;
        let generation: u64 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || version != INDEX_VERSION {
            return None;
        }
        (1..=MAX_CHUNKS)
            .contains(&chunks)
            .then_some(ChunkIndex { chunks, generation })
    }

    /// The index item's value.
    pub fn value(&self) -> String {
        format!("{INDEX_VERSION}-{}-{}", self.chunks, self.generation)
    }

    /// The key chunk `index` is stored under.
    pub fn chunk_key(&self, key: &[u8], index: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(key.len() + 32);
        out.extend_from_slice(key);
        out.extend_from_slice(format!(":{index}:{}", self.generation).as_bytes());
        out
    }
}

/// `route_bigvalue{ child, threshold, chunk }`.
pub struct BigValue {
    pub child: Rc<dyn Route>,
    /// Values longer than this many bytes are chunked.
    pub threshold: usize,
    /// Bytes per chunk item.
    pub chunk: usize,
    /// Limits for the requests this route makes (item size unbounded: the
    /// backends judge their own items).
    limits: Limits,
    generations: Sampler,
}

impl BigValue {
    pub fn new(
        child: Rc<dyn Route>,
        threshold: usize,
        chunk: usize,
        limits: &Limits,
        seed: u64,
    ) -> BigValue {
        // Mixed with the clock: a restarted or reloaded worker must not
        // draw the generations it drew before (a reused generation could
        // pair an old index with new chunks).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        BigValue {
            child,
            threshold,
            chunk: chunk.max(1),
            limits: Limits {
                max_item_size: usize::MAX,
                ..limits.clone()
            },
            generations: Sampler::new(seed ^ nanos.rotate_left(17)),
        }
    }

    fn request(&self, line: &[u8], value: &[u8]) -> Option<Request> {
        Request::parse(line, value, &self.limits).ok()
    }
}

fn reply(line: &str) -> ResponseFuture {
    Box::pin(std::future::ready(Response::from_line(line)))
}

const RESERVED_FLAG: &str = "CLIENT_ERROR client flag 0x8000 is reserved by route_bigvalue";

impl Route for BigValue {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("bigvalue", [&self.child], request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        match request.command() {
            Command::Store(s) => {
                if s.flags & BIG_VALUE_FLAG != 0 {
                    return reply(RESERVED_FLAG);
                }
                if matches!(s.op, StoreOp::Append | StoreOp::Prepend) {
                    let key = s.key.clone();
                    return Box::pin(self.append(key, request));
                }
                if request.value().len() > self.threshold {
                    let (key, flags, ttl) = (s.key.clone(), s.flags, i64::from(s.exptime));
                    return Box::pin(self.store_big(request, key, flags, ttl));
                }
                self.child.clone().call(request)
            }
            Command::Meta(m) if m.op == MetaOp::Set => {
                let flags = m.flags.client_flags.unwrap_or(0);
                if flags & BIG_VALUE_FLAG != 0 {
                    return reply(RESERVED_FLAG);
                }
                let mode = m.flags.mode.map(|c| c.to_ascii_uppercase());
                if matches!(mode, Some(b'A' | b'P')) {
                    let key = m.key.clone();
                    return Box::pin(self.append(key, request));
                }
                if request.value().len() > self.threshold {
                    if m.flags.base64_key() {
                        return reply(
                            "SERVER_ERROR route_bigvalue cannot chunk a value under a base64 key",
                        );
                    }
                    let (key, ttl) = (m.key.clone(), i64::from(m.flags.ttl.unwrap_or(0)));
                    return Box::pin(self.store_big(request, key, flags, ttl));
                }
                self.child.clone().call(request)
            }
            Command::Get(g) if g.keys.len() == 1 => {
                let touch = g.op.touches().then_some(g.exptime);
                Box::pin(self.get_text(request, touch))
            }
            Command::Meta(m) if m.op == MetaOp::Get && !m.flags.base64_key() => {
                Box::pin(self.get_meta(request))
            }
            Command::Touch { key, exptime, .. } => {
                let (key, exptime) = (key.clone(), *exptime);
                Box::pin(self.touch(request, key, exptime))
            }
            _ => self.child.clone().call(request),
        }
    }
}

impl BigValue {
    /// Stores a value over the threshold: every chunk first, then the
    /// index with the client's own command (so `add`, `replace` and `cas`
    /// decide on the index, and the client gets that reply in its
    /// protocol). If a chunk or the index is refused, the chunks already
    /// written are deleted in the background.
    async fn store_big(
        self: Rc<Self>,
        request: Request,
        key: Bytes,
        flags: u32,
        ttl: i64,
    ) -> Response {
        let value = request.value().clone();
        let chunks = value.len().div_ceil(self.chunk);
        if chunks > MAX_CHUNKS as usize {
            return Response::from_line("SERVER_ERROR object too large for cache");
        }
        let index = ChunkIndex {
            chunks: chunks as u32,
            generation: self.generations.next(),
        };
        if index.chunk_key(&key, index.chunks - 1).len() > MAX_KEY_LEN {
            return Response::from_line(
                "CLIENT_ERROR key too long for route_bigvalue's chunk keys",
            );
        }
        let mut sends = Vec::with_capacity(chunks);
        for i in 0..index.chunks {
            let start = i as usize * self.chunk;
            let piece = value.slice(start..(start + self.chunk).min(value.len()));
            let mut line = b"set ".to_vec();
            line.extend_from_slice(&index.chunk_key(&key, i));
            line.extend_from_slice(format!(" 0 {ttl} {}", piece.len()).as_bytes());
            match self.request(&line, &piece) {
                Some(set) => sends.push(self.child.clone().call(set)),
                None => {
                    return Response::from_line("SERVER_ERROR route_bigvalue cannot build a chunk")
                }
            }
        }
        let replies = futures_util::future::join_all(sends).await;
        if let Some(refused) = replies.into_iter().find(|r| r.line() != b"STORED") {
            self.forget_chunks(&key, index);
            return refused;
        }
        let index_value = index.value();
        let Some(store) = index_request(&request, flags | BIG_VALUE_FLAG, index_value.as_bytes())
            .and_then(|(line, value)| self.request(&line, &value))
        else {
            self.forget_chunks(&key, index);
            return Response::from_line("SERVER_ERROR route_bigvalue cannot build the index");
        };
        let stored = self.child.clone().call(store).await;
        if !stored_ok(&stored) {
            self.forget_chunks(&key, index);
        }
        stored
    }

    /// Deletes the chunks of a write that did not land, in the background.
    fn forget_chunks(&self, key: &[u8], index: ChunkIndex) {
        for i in 0..index.chunks {
            let mut line = b"delete ".to_vec();
            line.extend_from_slice(&index.chunk_key(key, i));
            if let Some(delete) = self.request(&line, b"") {
                tokio::task::spawn_local(self.child.clone().call(delete));
            }
        }
    }

    /// The value the chunks of `index` hold, in order: `Ok(None)` if any
    /// of them is missing (the read is a miss), `Err` with the first error
    /// a chunk's read answered (a failed server), as mcrouter answers the
    /// worst of its chunk replies. With `touch`, the chunks get that TTL
    /// (`gat`, `mg ... T`), so they do not expire before their index.
    async fn fetch_chunks(
        &self,
        key: &[u8],
        index: ChunkIndex,
        touch: Option<i32>,
    ) -> Result<Option<Bytes>, Response> {
        let mut reads = Vec::with_capacity(index.chunks as usize);
        for i in 0..index.chunks {
            let mut line = match touch {
                Some(ttl) => format!("gat {ttl} ").into_bytes(),
                None => b"get ".to_vec(),
            };
            line.extend_from_slice(&index.chunk_key(key, i));
            match self.request(&line, b"") {
                Some(read) => reads.push(self.child.clone().call(read)),
                None => return Ok(None),
            }
        }
        let replies = futures_util::future::join_all(reads).await;
        if let Some(at) = replies.iter().position(|r| !r.is_ok()) {
            return Err(replies.into_iter().nth(at).unwrap_or_else(Response::miss));
        }
        let total = replies
            .iter()
            .map(|r| r.value().map_or(0, <[u8]>::len))
            .sum();
        let mut value = BytesMut::with_capacity(total);
        for reply in &replies {
            match reply.value().filter(|_| reply.is_hit()) {
                Some(piece) => value.extend_from_slice(piece),
                None => return Ok(None),
            }
        }
        Ok(Some(value.freeze()))
    }

    /// The item `key` names, read with a meta get (value, flags, CAS,
    /// TTL): `Err` is the child's error reply, `Ok(None)` a miss.
    async fn probe(&self, key: &[u8]) -> Result<Option<Reply>, Response> {
        let mut line = b"mg ".to_vec();
        line.extend_from_slice(key);
        line.extend_from_slice(b" v f c t");
        let Some(probe) = self.request(&line, b"") else {
            return Ok(None);
        };
        let reply = self.child.clone().call(probe).await;
        if !reply.is_ok() {
            return Err(reply);
        }
        let item = Reply::parse(reply.raw());
        Ok((item.status == Status::Hit).then_some(item))
    }

    /// The client's reply to `request` from an index reply `item`: the
    /// whole item (flags restored, value reassembled), a miss when the
    /// index is damaged or a chunk is missing, or a chunk's error.
    async fn reassemble(
        &self,
        request: &Request,
        key: &[u8],
        item: Reply,
        touch: Option<i32>,
    ) -> Response {
        let Some(index) = ChunkIndex::parse(&item.value) else {
            return Reply::from(Status::Miss).to_response(request);
        };
        match self.fetch_chunks(key, index, touch).await {
            Ok(Some(value)) => Reply {
                size: Some(value.len() as u64),
                flags: item.flags.map(|f| f & !BIG_VALUE_FLAG),
                value,
                ..item
            }
            .to_response(request),
            Ok(None) => Reply::from(Status::Miss).to_response(request),
            Err(error) => error,
        }
    }

    /// `get`/`gets`/`gat`/`gats` of one key: the child's reply as it is
    /// unless it is an index; then the reassembled value.
    async fn get_text(self: Rc<Self>, request: Request, touch: Option<i32>) -> Response {
        let reply = self.child.clone().call(request.clone()).await;
        if !reply.is_hit() {
            return reply;
        }
        let item = Reply::parse(reply.raw());
        if item.flags.unwrap_or(0) & BIG_VALUE_FLAG == 0 {
            return reply;
        }
        let Some(key) = request.key() else {
            return reply;
        };
        self.reassemble(&request, key, item, touch).await
    }

    /// `mg`: sent with `f` added when the client did not ask for it (to
    /// see the marker bit), which is taken out of the reply again; a plain
    /// item's reply is otherwise the child's. An index is read again with
    /// its value and reassembled.
    async fn get_meta(self: Rc<Self>, request: Request) -> Response {
        let Command::Meta(m) = request.command() else {
            return self.child.clone().call(request).await;
        };
        let added_f = !m.flags.has(b'f');
        let touch = m.flags.ttl;
        let key = m.key.clone();
        let sent = if added_f {
            let mut line = request.raw_line().to_vec();
            line.extend_from_slice(b" f");
            match self.request(&line, b"") {
                Some(r) => r,
                None => return self.child.clone().call(request).await,
            }
        } else {
            request.clone()
        };
        let reply = self.child.clone().call(sent).await;
        if !reply.is_hit() {
            return reply;
        }
        let flags = meta_flags_of(reply.line());
        if flags.unwrap_or(0) & BIG_VALUE_FLAG == 0 {
            return if added_f {
                without_added_flag(&reply, &request).unwrap_or(reply)
            } else {
                reply
            };
        }
        match self.probe(&key).await {
            Ok(Some(item)) if item.flags.unwrap_or(0) & BIG_VALUE_FLAG != 0 => {
                self.reassemble(&request, &key, item, touch).await
            }
            // Replaced by a plain value in between: that value.
            Ok(Some(item)) => Reply {
                size: Some(item.value.len() as u64),
                ..item
            }
            .to_response(&request),
            Ok(None) => Reply::from(Status::Miss).to_response(&request),
            Err(error) => error,
        }
    }

    /// `touch`: the index, then (when it is one) its chunks, so they keep
    /// living as long as the index.
    async fn touch(self: Rc<Self>, request: Request, key: Bytes, exptime: i32) -> Response {
        let reply = self.child.clone().call(request).await;
        if reply.line() != b"TOUCHED" {
            return reply;
        }
        if let Ok(Some(item)) = self.probe(&key).await {
            if let Some(index) = ChunkIndex::parse(&item.value)
                .filter(|_| item.flags.unwrap_or(0) & BIG_VALUE_FLAG != 0)
            {
                let touches: Vec<ResponseFuture> = (0..index.chunks)
                    .filter_map(|i| {
                        let mut line = b"touch ".to_vec();
                        line.extend_from_slice(&index.chunk_key(&key, i));
                        line.extend_from_slice(format!(" {exptime}").as_bytes());
                        self.request(&line, b"")
                    })
                    .map(|t| self.child.clone().call(t))
                    .collect();
                futures_util::future::join_all(touches).await;
            }
        }
        reply
    }

    /// `append`/`prepend` (and `ms` in those modes): refused on a chunked
    /// value (its bytes are not in the item the backend would change);
    /// otherwise the child's.
    async fn append(self: Rc<Self>, key: Bytes, request: Request) -> Response {
        match self.probe(&key).await {
            Ok(Some(item)) if item.flags.unwrap_or(0) & BIG_VALUE_FLAG != 0 => {
                Response::from_line("SERVER_ERROR route_bigvalue cannot append to a chunked value")
            }
            Err(error) => error,
            _ => self.child.clone().call(request).await,
        }
    }
}

/// Whether a store's reply says it stored (`STORED`, meta `HD`).
fn stored_ok(reply: &Response) -> bool {
    let line = reply.line();
    line == b"STORED" || line.starts_with(b"HD")
}

/// The client's store rewritten to store `value` with `flags`: the line
/// (flags and length tokens replaced, or meta `F` set) and the value.
fn index_request(request: &Request, flags: u32, value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let line = request.raw_line();
    let mut tokens: Vec<Vec<u8>> = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    match request.command() {
        Command::Store(_) => {
            // `<cmd> <key> <flags> <exptime> <bytes> [cas] [noreply]`
            *tokens.get_mut(2)? = flags.to_string().into_bytes();
            *tokens.get_mut(4)? = value.len().to_string().into_bytes();
        }
        Command::Meta(_) => {
            // `ms <key> <datalen> <flags>*`
            *tokens.get_mut(2)? = value.len().to_string().into_bytes();
            tokens.retain(|t| t.first() != Some(&b'F'));
            tokens.push(format!("F{flags}").into_bytes());
        }
        _ => return None,
    }
    Some((tokens.join(&b' '), value.to_vec()))
}

/// The client flags a meta reply line carries (`f<N>`), if any.
fn meta_flags_of(line: &[u8]) -> Option<u32> {
    line.split(|&b| b == b' ')
        .skip(1)
        .filter(|t| t.first() == Some(&b'f'))
        .filter_map(|t| std::str::from_utf8(&t[1..]).ok()?.parse().ok())
        .last()
}

/// A meta reply without the `f` token this route added to the request
/// (the last one on the line: memcached answers flags in request order),
/// framed again for the client's own request.
fn without_added_flag(reply: &Response, request: &Request) -> Option<Response> {
    let raw = reply.raw();
    let line = reply.line();
    let mut at = None;
    let mut pos = 0;
    for (i, token) in line.split(|&b| b == b' ').enumerate() {
        if i > 0 && token.first() == Some(&b'f') && token[1..].iter().all(u8::is_ascii_digit) {
            at = Some((pos - 1, pos + token.len()));
        }
        pos += token.len() + 1;
    }
    let (start, end) = at?;
    let mut out = BytesMut::with_capacity(raw.len());
    out.extend_from_slice(&raw[..start]);
    out.extend_from_slice(&raw[end..]);
    let decoder = memroute_proto::ResponseDecoder::for_request(request);
    decoder.decode(&mut out).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_values_and_chunk_keys_are_mcrouters() {
        let index = ChunkIndex::parse(b"1-3-1234").unwrap();
        assert_eq!(
            index,
            ChunkIndex {
                chunks: 3,
                generation: 1234
            }
        );
        assert_eq!(index.value(), "1-3-1234");
        assert_eq!(index.chunk_key(b"key", 2), b"key:2:1234");
        for bad in [
            &b"2-3-1234"[..],
            b"1-3",
            b"1-3-x",
            b"1-0-5",
            b"1-3-4-5",
            b"",
            b"1-999999999-1",
        ] {
            assert_eq!(ChunkIndex::parse(bad), None, "{bad:?}");
        }
    }

    fn req(line: &str, value: &str) -> Request {
        Request::parse(line.as_bytes(), value.as_bytes(), &Limits::default()).unwrap()
    }

    #[test]
    fn the_index_store_keeps_the_clients_command() {
        let (line, value) = index_request(
            &req("cas k 5 60 3 99 noreply", "abc"),
            5 | BIG_VALUE_FLAG,
            b"1-2-7",
        )
        .unwrap();
        assert_eq!(line, b"cas k 32773 60 5 99 noreply");
        assert_eq!(value, b"1-2-7");
        let (line, _) =
            index_request(&req("ms k 3 F5 T9 ME", "abc"), 5 | BIG_VALUE_FLAG, b"1-2-7").unwrap();
        assert_eq!(line, b"ms k 5 T9 ME F32773");
    }

    #[test]
    fn an_added_f_flag_is_taken_out_of_the_reply() {
        let request = req("mg k s v", "");
        let mut raw = BytesMut::from(&b"VA 2 s2 f0\r\nhi\r\n"[..]);
        let reply = memroute_proto::ResponseDecoder::for_request(&request)
            .decode(&mut raw)
            .unwrap()
            .unwrap();
        assert_eq!(meta_flags_of(reply.line()), Some(0));
        let back = without_added_flag(&reply, &request).unwrap();
        assert_eq!(&back.raw()[..], b"VA 2 s2\r\nhi\r\n");
        assert_eq!(back.value(), Some(&b"hi"[..]));
    }
}
