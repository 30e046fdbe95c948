//! One pipelined connection slot of a backend: its request queue, and the
//! supervisor task that connects, validates, runs the reader and writer,
//! and reconnects.
//!
//! A slot outlives its TCP connections. Requests are queued on the slot
//! (their bytes appended to `out`, their reply decoder pushed on `queue`, in
//! the same order), so requests issued while the connection is (re)opening
//! go out as soon as it is validated.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use memroute_proto::response::MalformedResponse;
use memroute_proto::{
    retrieval_head, take_retrieval_piece, Command, GetOp, Request, Response, ResponseCode,
    ResponseDecoder, RetrievalHead, RetrievalPiece,
};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tracing::{debug, info, warn};

use super::config::BackendConfig;
use super::error::BackendError;
use super::health::FailureOutcome;
use super::reply::{self, ReplyReceiver, ReplySender};
use super::room::Room;
use super::{Inner, MAX_IN_FLIGHT};

/// Bytes reserved per read.
const READ_CHUNK: usize = 16 * 1024;
/// Buffers that grew past this (a large value) are released once empty.
const SHRINK_ABOVE: usize = 256 * 1024;
/// Capacity of each buffer the `VALUE` pieces of joined replies are copied
/// into (see [`take_retrieval_piece`]): a few dozen small replies share
/// one allocation; a bigger piece gets one of its own, so the buffer never
/// grows. A reply held on to keeps its whole buffer alive, as a reply
/// split off the read buffer keeps that one.
const PIECES_CHUNK: usize = 8 * 1024;
/// A reply still incomplete after this many bytes is treated as malformed,
/// so a broken backend cannot make us buffer without bound. Far above any
/// sane reply (memcached's largest item is 1 GiB only with `-I 1g`).
pub(crate) const MAX_REPLY_BYTES: usize = 256 * 1024 * 1024;

/// Longest `get` line that single-key gets are joined into. memcached
/// reads get lines of any length, but other servers and proxies may not.
const MAX_JOINED_LINE: usize = 2000;

/// A request waiting for its reply.
pub(crate) struct Pending {
    pub(crate) decoder: ResponseDecoder,
    pub(crate) reply: ReplySender,
    pub(crate) queued_at: Instant,
    /// What the reply must carry to be this request's: a reply for
    /// another key means the stream is out of step.
    expect: Expect,
    /// Whether its key was appended to the line of the request queued just
    /// before it (see [`Slot::push`]).
    joined: bool,
}

/// What identifies a request's reply, to tell a stream that fell out of
/// step (a reply that is not this request's) from a good one.
#[derive(Debug, Default)]
enum Expect {
    #[default]
    Nothing,
    /// A single-key retrieval: its `VALUE` must be for this key (also how
    /// a joined reply finds the request of each `VALUE`). A copy, kept
    /// inline when short: a clone of the request's key would share the
    /// request's frame, which costs the frame a second allocation (its
    /// reference count) and a second free, about 230 instructions of the
    /// ~8,000 of a proxied get (docs/benchmarks.md, run 24).
    Key(SmallVec<[u8; 64]>),
    /// A multi-key retrieval: its `VALUE`s come in the order of these keys.
    Keys(Box<[Bytes]>),
    /// A meta request with `O`: an `O` flag in its reply must echo it.
    Opaque(Bytes),
}

impl Expect {
    fn of(request: &Request) -> Expect {
        match request.command() {
            Command::Get(g) if g.keys.len() == 1 => Expect::Key(SmallVec::from_slice(&g.keys[0])),
            Command::Get(g) => Expect::Keys(g.keys.iter().cloned().collect()),
            Command::Meta(m) => match m.flags.opaque() {
                Some(o) => Expect::Opaque(Bytes::copy_from_slice(o)),
                None => Expect::Nothing,
            },
            _ => Expect::Nothing,
        }
    }

    fn key(&self) -> Option<&[u8]> {
        match self {
            Expect::Key(key) => Some(key),
            _ => None,
        }
    }

    /// Whether `response` can be the reply to the request.
    fn accepts(&self, response: &Response) -> bool {
        match self {
            Expect::Nothing => true,
            // A single-key reply carries one VALUE.
            Expect::Key(key) => response.retrieval_key().is_none_or(|got| got == &key[..]),
            Expect::Keys(keys) => {
                // Each VALUE takes the next requested key it names
                // (a key asked twice is answered twice).
                let mut wanted = keys.iter();
                response
                    .value_keys()
                    .all(|got| wanted.any(|k| &k[..] == got))
            }
            Expect::Opaque(opaque) => {
                let line = response.line();
                if response.code().is_error() {
                    return true;
                }
                line.split(|&b| b == b' ')
                    .skip(1)
                    .filter(|t| t.first() == Some(&b'O'))
                    .all(|t| t[1..] == opaque[..])
            }
        }
    }
}

/// What a client whose reply held a value over the size limit gets (the
/// words memcached uses when it cannot hold a `get`'s reply).
const OVERSIZE_REPLY: &str = "SERVER_ERROR out of memory writing get response";

/// One of a backend's `connections` pipelined connections.
pub(crate) struct Slot {
    /// Requests queued or written and not yet answered, oldest first.
    pub(crate) queue: RefCell<VecDeque<Pending>>,
    /// Encoded requests not yet handed to the socket, in `queue` order
    /// (every request in `out` is also in `queue`).
    pub(crate) out: RefCell<BytesMut>,
    /// Whether a validated connection is running.
    pub(crate) connected: Cell<bool>,
    pub(crate) wake_writer: Notify,
    pub(crate) wake_reader: Notify,
    pub(crate) wake_supervisor: Notify,
    /// One unit per request that may still join `queue`.
    pub(crate) room: Room,
    /// The `get`/`gets` line at the end of `out` that more single-key gets
    /// may join: its op and where it starts in `out`.
    open_line: Cell<Option<(GetOp, usize)>>,
    /// When the reader last received bytes: the replies in them arrived
    /// then (one clock read per read, not one per reply).
    read_at: Cell<Instant>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            queue: RefCell::default(),
            out: RefCell::default(),
            connected: Cell::new(false),
            wake_writer: Notify::new(),
            wake_reader: Notify::new(),
            wake_supervisor: Notify::new(),
            room: Room::new(MAX_IN_FLIGHT),
            open_line: Cell::new(None),
            read_at: Cell::new(Instant::now()),
        }
    }
}

impl Slot {
    /// Queues one request; its bytes leave with the next write.
    ///
    /// With `batch_gets`, a single-key `get`/`gets` that follows another of
    /// the same op still in `out` joins its line (`get a` + `get b` leave as
    /// `get a b`); the reader splits the reply back (see
    /// [`Slot::answer_joined`]).
    pub(crate) fn push(&self, request: &Request, batch_gets: bool) -> ReplyReceiver {
        let (tx, rx) = reply::channel();
        let joinable = if batch_gets { joinable(request) } else { None };
        let mut joined = false;
        let out_was_empty;
        {
            let mut out = self.out.borrow_mut();
            out_was_empty = out.is_empty();
            match joinable {
                Some((op, key)) => {
                    if let Some((open_op, start)) = self.open_line.get() {
                        if open_op == op && out.len() - start + 1 + key.len() <= MAX_JOINED_LINE {
                            // The open line is the last thing in `out`:
                            // replace its `\r\n` with ` key\r\n`.
                            let without_crlf = out.len() - 2;
                            out.truncate(without_crlf);
                            out.put_u8(b' ');
                            out.put_slice(key);
                            out.put_slice(b"\r\n");
                            joined = true;
                        }
                    }
                    if !joined {
                        self.open_line.set(Some((op, out.len())));
                        request.encode(&mut out);
                    }
                }
                None => {
                    self.open_line.set(None);
                    request.encode(&mut out);
                }
            }
        }
        let queue_was_empty = {
            let mut queue = self.queue.borrow_mut();
            queue.push_back(Pending {
                decoder: ResponseDecoder::for_request(request),
                reply: tx,
                queued_at: Instant::now(),
                expect: Expect::of(request),
                joined,
            });
            queue.len() == 1
        };
        if self.connected.get() {
            // The writer waits only while `out` is empty, the reader only
            // while the queue is: the request that ended that wakes them
            // (or leaves them a permit), the ones behind it need not.
            if out_was_empty {
                self.wake_writer.notify_one();
            }
            if queue_was_empty {
                self.wake_reader.notify_one();
            }
        } else {
            self.wake_supervisor.notify_one();
        }
        rx
    }

    /// Takes every byte not yet written (the writer's turn); nothing more
    /// may join a line that is on its way.
    fn take_out(&self, into: &mut BytesMut) {
        std::mem::swap(&mut *self.out.borrow_mut(), into);
        self.open_line.set(None);
    }

    /// How many requests at the front of the queue share the first one's
    /// line (1 when it was not joined by any).
    fn front_line_len(&self) -> usize {
        let queue = self.queue.borrow();
        1 + queue.iter().skip(1).take_while(|p| p.joined).count()
    }

    /// Hands one piece of a joined reply to the `left` requests at the
    /// front of the queue that share its line: a `VALUE` to the request for
    /// its key (the ones before it missed), `END` a miss to all the rest,
    /// an error to all the rest. Returns whether the reply is over (`END`
    /// or an error: only then may the next line's reply start).
    fn answer_joined(
        &self,
        inner: &Inner,
        left: &mut usize,
        piece: RetrievalPiece,
    ) -> Result<bool, MalformedResponse> {
        match piece {
            RetrievalPiece::Value(reply) => {
                let key = reply.retrieval_key().unwrap_or_default();
                self.skip_joined_misses(inner, left, key)?;
                self.answer_front(inner, reply);
                Ok(false)
            }
            RetrievalPiece::End => self.answer_rest(inner, left, Response::miss()),
            RetrievalPiece::Error(error) => self.answer_rest(inner, left, error),
        }
    }

    /// A `VALUE` for `key` arrived in a joined reply: the requests of the
    /// `left` before the one for `key` missed and are answered so; the one
    /// for `key` is left at the front for the caller to answer.
    fn skip_joined_misses(
        &self,
        inner: &Inner,
        left: &mut usize,
        key: &[u8],
    ) -> Result<(), MalformedResponse> {
        let misses = self
            .queue
            .borrow()
            .iter()
            .take(*left)
            .position(|p| p.expect.key() == Some(key))
            .ok_or(MalformedResponse("VALUE for a key not asked for"))?;
        for _ in 0..misses {
            self.answer_front(inner, Response::miss());
        }
        *left -= misses + 1;
        Ok(())
    }

    /// The joined reply ended: every one of the `left` requests still
    /// waiting gets `response`.
    fn answer_rest(
        &self,
        inner: &Inner,
        left: &mut usize,
        response: Response,
    ) -> Result<bool, MalformedResponse> {
        for _ in 0..*left {
            self.answer_front(inner, response.clone());
        }
        *left = 0;
        Ok(true)
    }

    /// Whether `response` can be the oldest request's reply.
    fn front_accepts(&self, response: &Response) -> bool {
        self.queue
            .borrow()
            .front()
            .is_none_or(|p| p.expect.accepts(response))
    }

    /// Hands `response` to the oldest request.
    fn answer_front(&self, inner: &Inner, response: Response) {
        let pending = self.queue.borrow_mut().pop_front();
        if let Some(pending) = pending {
            self.left_queue(inner, 1);
            let round_trip = self
                .read_at
                .get()
                .saturating_duration_since(pending.queued_at);
            inner.record_reply(round_trip);
            // The caller may have given up: the reply was still consumed,
            // so the stream stays in sync.
            pending.reply.send(Ok(response), round_trip);
        }
    }

    /// The reader received `bytes`.
    fn received(&self, inner: &Inner, bytes: usize) {
        self.read_at.set(Instant::now());
        inner.counters.bytes_read.add(bytes as u64);
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Takes room for one request under [`MAX_IN_FLIGHT`], waiting behind
    /// earlier waiters (the room is fair) for at most `limit`; false if
    /// none came. The room is given back when the request leaves the queue
    /// (its reply, or [`fail_all`](Self::fail_all)).
    pub(crate) async fn take_room(&self, limit: Duration) -> bool {
        self.try_take_room() || timeout(limit, self.room.take()).await.is_ok()
    }

    /// Takes room for one request if there is some now (and nobody waits
    /// for it before us: freed room goes to waiters first).
    pub(crate) fn try_take_room(&self) -> bool {
        self.room.try_take()
    }

    /// `n` requests left the queue: their room goes back (to the oldest
    /// waiter, if any) and the in-flight gauge goes down.
    fn left_queue(&self, inner: &Inner, n: usize) {
        self.room.give(n);
        inner.counters.in_flight.sub(n);
    }

    /// Fails every queued request with `error` and drops unsent bytes: the
    /// next connection starts with an empty, in-sync stream.
    fn fail_all(&self, inner: &Inner, error: &BackendError) {
        let failed: Vec<Pending> = self.queue.borrow_mut().drain(..).collect();
        self.out.borrow_mut().clear();
        self.open_line.set(None);
        self.left_queue(inner, failed.len());
        let now = Instant::now();
        for pending in failed {
            let round_trip = now.saturating_duration_since(pending.queued_at);
            pending.reply.send(Err(error.clone()), round_trip);
        }
    }
}

/// How a connection ended.
enum SessionEnd {
    /// Closed (or reset) by the backend with nothing in flight: not a
    /// failure; the slot reconnects when the next request arrives.
    Idle,
    /// Broke with requests in flight (or out of sync): counted as a failure;
    /// the slot reconnects at once (or at the retry time if now bad).
    Failed(BackendError),
}

/// Runs one slot for the life of its backend: waits for a reason to
/// connect, connects and validates, serves the connection, and starts over.
/// Aborted when the [`Backend`](super::Backend) is dropped.
pub(crate) async fn supervise(inner: Rc<Inner>, slot: Rc<Slot>) {
    let config = inner.config.clone();
    // Reconnect without waiting for a request (after a failure, so a broken
    // backend is noticed and marked bad, and a bad one is probed).
    let mut eager = false;
    let mut first = true;
    loop {
        loop {
            let retry_at = inner.health.borrow().retry_at();
            if let Some(at) = retry_at {
                // Bad: nothing queued may wait for the retry.
                slot.fail_all(&inner, &BackendError::Down);
                if Instant::now() >= at {
                    break;
                }
                sleep_until(at).await;
                continue;
            }
            if eager || slot.in_flight() > 0 {
                break;
            }
            slot.wake_supervisor.notified().await;
        }
        if !first {
            inner.counters.reconnects.incr();
        }
        first = false;

        let stream = match connect(&config).await {
            Ok(stream) => stream,
            Err(error) => {
                inner.counters.connect_failures.incr();
                debug!(backend = %config.label, %error, "backend connect failed");
                let depth = slot.in_flight();
                slot.fail_all(&inner, &error);
                inner.record_failure(&error, depth);
                eager = true;
                continue;
            }
        };
        inner.counters.connects.incr();
        if inner.health.borrow_mut().validated(Instant::now()) {
            inner.counters.bad.store(false, Relaxed);
            info!(backend = %config.label, "backend recovered");
        }

        inner.counters.connections_open.add(1);
        slot.connected.set(true);
        let end = session(&inner, &slot, stream).await;
        slot.connected.set(false);
        inner.counters.connections_open.sub(1);

        match end {
            SessionEnd::Idle => {
                debug!(backend = %config.label, "backend closed an idle connection");
                eager = false;
            }
            SessionEnd::Failed(error) => {
                debug!(backend = %config.label, %error, "backend connection failed");
                let depth = slot.in_flight();
                slot.fail_all(&inner, &error);
                inner.record_failure(&error, depth);
                eager = true;
            }
        }
    }
}

/// A backend connection: plain TCP, or TLS over it (`tls = true`).
enum BackendStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects (within `connect_timeout`, the TLS handshake included, its
/// certificate checked as `mcp.init_tls` said) and checks that the peer
/// answers `version` with a `VERSION` line and nothing more (within
/// `read_timeout`).
async fn connect(config: &BackendConfig) -> Result<BackendStream, BackendError> {
    let started = Instant::now();
    let stream = connect_tcp(config).await?;
    let Some(tls) = &config.tls else {
        return validated(config, stream).await.map(BackendStream::Plain);
    };
    let name = crate::tls::ClientTls::server_name(&tls.server_name)
        .map_err(|e| BackendError::connect(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let connector = tokio_rustls::TlsConnector::from(tls.client.config.clone());
    let left = config.connect_timeout.saturating_sub(started.elapsed());
    let stream = match timeout(left, connector.connect(name, stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(BackendError::connect(io::Error::new(
                e.kind(),
                format!("TLS handshake with {}: {e}", tls.server_name),
            )))
        }
        Err(_) => {
            return Err(BackendError::connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TLS handshake timed out after {:?}", config.connect_timeout),
            )))
        }
    };
    validated(config, stream)
        .await
        .map(|s| BackendStream::Tls(Box::new(s)))
}

/// The TCP connection, within `connect_timeout`.
async fn connect_tcp(config: &BackendConfig) -> Result<TcpStream, BackendError> {
    let addr = (config.host.as_str(), config.port);
    let stream = match timeout(config.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(BackendError::connect(e)),
        Err(_) => {
            return Err(BackendError::connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {:?}", config.connect_timeout),
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    if config.tcp_keepalive {
        socket2::SockRef::from(&stream)
            .set_keepalive(true)
            .map_err(BackendError::connect)?;
    }
    Ok(stream)
}

/// `stream` once it has answered `version` within `read_timeout`.
async fn validated<S: AsyncRead + AsyncWrite + Unpin>(
    config: &BackendConfig,
    mut stream: S,
) -> Result<S, BackendError> {
    match timeout(config.read_timeout, validate(&mut stream)).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(BackendError::connect(e)),
        Err(_) => Err(BackendError::connect(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no reply to version within {:?}", config.read_timeout),
        ))),
    }
}

async fn validate<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> io::Result<()> {
    let mut rbuf = BytesMut::with_capacity(256);
    let request = Request::new(
        Bytes::from_static(b"version"),
        Bytes::new(),
        Command::Version,
    );
    let decoder = ResponseDecoder::for_request(&request);
    let mut wbuf = BytesMut::new();
    request.encode(&mut wbuf);
    stream.write_all(&wbuf).await?;
    stream.flush().await?;
    loop {
        match decoder.decode(&mut rbuf) {
            Ok(Some(reply)) if reply.code() == ResponseCode::Version => {
                if !rbuf.is_empty() {
                    // Anything else would be taken for a request's reply.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "validation failed: unexpected data after VERSION",
                    ));
                }
                return Ok(());
            }
            Ok(Some(reply)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "validation failed: version answered {:?}",
                        String::from_utf8_lossy(reply.line())
                    ),
                ))
            }
            Err(malformed) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("validation failed: {malformed}"),
                ))
            }
            Ok(None) => {}
        }
        if rbuf.len() > 4096 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "validation failed: version reply too long",
            ));
        }
        rbuf.reserve(512);
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "validation failed: connection closed",
            ));
        }
    }
}

/// Serves one validated connection until it breaks or goes idle-closed.
/// Writer and reader run concurrently (in one task), so a large pipelined
/// write waiting for the backend to read never stops us from reading its
/// replies.
///
/// Plain TCP uses the socket's own halves; a TLS session is split with
/// `tokio::io::split` (the reader and the writer share its state).
async fn session(inner: &Inner, slot: &Slot, stream: BackendStream) -> SessionEnd {
    match stream {
        BackendStream::Plain(stream) => {
            let (mut rd, mut wr) = stream.into_split();
            run_session(inner, slot, &mut rd, &mut wr).await
        }
        BackendStream::Tls(stream) => {
            let (mut rd, mut wr) = tokio::io::split(*stream);
            run_session(inner, slot, &mut rd, &mut wr).await
        }
    }
}

async fn run_session<R, W>(inner: &Inner, slot: &Slot, rd: &mut R, wr: &mut W) -> SessionEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tokio::select! {
        error = write_loop(inner, slot, wr) => SessionEnd::Failed(error),
        end = read_loop(inner, slot, rd, Instant::now()) => end,
    }
}

/// Writes everything queued in `out`, one batch per write; returns only on
/// error.
async fn write_loop<W: AsyncWrite + Unpin>(inner: &Inner, slot: &Slot, wr: &mut W) -> BackendError {
    let mut batch = BytesMut::new();
    loop {
        if slot.out.borrow().is_empty() {
            slot.wake_writer.notified().await;
            continue;
        }
        // Take every request queued so far (all of this tick's sends).
        slot.take_out(&mut batch);
        inner.counters.writes.incr();
        inner.counters.bytes_written.add(batch.len() as u64);
        // (The flush is a no-op for TCP; a TLS session may still hold
        // bytes the socket did not take.)
        if let Err(e) = wr.write_all(&batch).await {
            return BackendError::io(e);
        }
        if let Err(e) = wr.flush().await {
            return BackendError::io(e);
        }
        batch.clear();
        if batch.capacity() > SHRINK_ABOVE {
            batch = BytesMut::new();
        }
    }
}

/// A reply with a value over the size limit: what the request keeps of it
/// (the values that fit), and whether more of its pieces (a `get` reply's,
/// up to `END`) are still to come.
struct Dropping {
    prefix: BytesMut,
    more: bool,
    decoder: ResponseDecoder,
}

/// Reads replies and hands each to the oldest waiting request.
///
/// Every request must be answered within `read_timeout` of its being sent
/// (of the connection's start, for requests queued before it): a backend
/// that drips bytes cannot hold a request longer by sending a little at a
/// time. A value larger than the item size limit is dropped as it streams
/// in, never buffered. A reply that is not its request's (a `VALUE` for
/// another key, another opaque) means the stream is out of step: the
/// connection is dropped and only the requests on it fail.
async fn read_loop<R: AsyncRead + Unpin>(
    inner: &Inner,
    slot: &Slot,
    rd: &mut R,
    connected_at: Instant,
) -> SessionEnd {
    let read_timeout = inner.config.read_timeout;
    let cap = inner.config.max_value;
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    // Where the values of joined replies are copied (each with its `END`).
    let mut pieces = BytesMut::with_capacity(PIECES_CHUNK);
    // While a joined reply is arriving: how many requests at the front still
    // wait for their share of it.
    let mut joined_left: Option<usize> = None;
    // Bytes of an oversize value block still to drop as they arrive.
    let mut discard = 0usize;
    let mut dropping: Option<Dropping> = None;
    loop {
        loop {
            if discard > 0 {
                let n = discard.min(rbuf.len());
                bytes::Buf::advance(&mut rbuf, n);
                discard -= n;
                if discard > 0 {
                    break;
                }
            }
            if let Some(drop) = dropping.as_mut() {
                if drop.more {
                    match retrieval_head(&rbuf) {
                        Ok(Some(RetrievalHead::Value { header, size })) if size > cap => {
                            inner.counters.oversize_values.incr();
                            discard = header.saturating_add(size).saturating_add(2);
                            continue;
                        }
                        Ok(Some(RetrievalHead::Value { header, size })) => {
                            // A value that fits still reaches its client.
                            let block = header + size + 2;
                            if rbuf.len() < block {
                                break;
                            }
                            drop.prefix.extend_from_slice(&rbuf[..block]);
                            bytes::Buf::advance(&mut rbuf, block);
                            continue;
                        }
                        Ok(Some(RetrievalHead::End { len } | RetrievalHead::Error { len })) => {
                            bytes::Buf::advance(&mut rbuf, len);
                            drop.more = false;
                        }
                        Ok(None) => break,
                        Err(malformed) => {
                            return SessionEnd::Failed(BackendError::BadResponse(malformed))
                        }
                    }
                }
                let Dropping {
                    prefix, decoder, ..
                } = dropping.take().expect("dropping");
                slot.answer_front(inner, oversize_reply(prefix, decoder));
                continue;
            }
            if rbuf.is_empty() {
                break;
            }
            // Only reply bytes tell that the front request's line was
            // written (and so can no longer be joined by more keys).
            let left = match joined_left.as_mut() {
                Some(left) => left,
                None => {
                    let Some(decoder) = slot.queue.borrow().front().map(|p| p.decoder) else {
                        break;
                    };
                    let line = slot.front_line_len();
                    if line == 1 {
                        // A reply whose bytes so far fit in `cap` cannot
                        // have buffered a value over it yet: only a longer
                        // buffer is searched (once past `cap`, the rest of
                        // an oversize block is dropped as it arrives).
                        let over = if rbuf.len() > cap {
                            decoder.find_oversize(&rbuf, cap)
                        } else {
                            None
                        };
                        if let Some(over) = over {
                            inner.counters.oversize_values.incr();
                            let prefix = rbuf.split_to(over.prefix);
                            discard = over.header.saturating_add(over.size).saturating_add(2);
                            dropping = Some(Dropping {
                                prefix,
                                more: over.more,
                                decoder,
                            });
                            continue;
                        }
                        match decoder.decode(&mut rbuf) {
                            Ok(Some(response)) => {
                                if !slot.front_accepts(&response) {
                                    return SessionEnd::Failed(BackendError::BadResponse(
                                        MalformedResponse("reply does not match its request"),
                                    ));
                                }
                                slot.answer_front(inner, response)
                            }
                            Ok(None) => break,
                            Err(malformed) => {
                                return SessionEnd::Failed(BackendError::BadResponse(malformed))
                            }
                        }
                        continue;
                    }
                    joined_left.insert(line)
                }
            };
            // The head is read once: to see an oversize value before its
            // data arrives, then to take the piece.
            let head = match retrieval_head(&rbuf) {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(malformed) => return SessionEnd::Failed(BackendError::BadResponse(malformed)),
            };
            if let RetrievalHead::Value { header, size } = head {
                if size > cap {
                    inner.counters.oversize_values.incr();
                    let key = Response::value_line_key(&rbuf[..header]).unwrap_or_default();
                    if let Err(malformed) = slot.skip_joined_misses(inner, left, key) {
                        return SessionEnd::Failed(BackendError::BadResponse(malformed));
                    }
                    // Its request (now at the front) is answered once the
                    // block is dropped, so the queue still shows it due.
                    let decoder = slot.queue.borrow().front().map(|p| p.decoder);
                    discard = header.saturating_add(size).saturating_add(2);
                    dropping = decoder.map(|decoder| Dropping {
                        prefix: BytesMut::new(),
                        more: false,
                        decoder,
                    });
                    continue;
                }
            }
            // A value too big to share a buffer with others gets its own.
            let shared = head.piece_len().saturating_add(5) <= PIECES_CHUNK;
            let mut own = BytesMut::new();
            let into = if shared { &mut pieces } else { &mut own };
            match take_retrieval_piece(&mut rbuf, head, into) {
                Ok(Some(piece)) => match slot.answer_joined(inner, left, piece) {
                    Ok(true) => joined_left = None,
                    Ok(false) => {}
                    Err(malformed) => {
                        return SessionEnd::Failed(BackendError::BadResponse(malformed))
                    }
                },
                Ok(None) => break,
                Err(malformed) => return SessionEnd::Failed(BackendError::BadResponse(malformed)),
            }
        }
        let idle = slot.queue.borrow().is_empty() && joined_left.is_none();
        if idle && (!rbuf.is_empty() || discard > 0) {
            // (An oversize block is dropped while its request still waits.)
            return SessionEnd::Failed(BackendError::BadResponse(MalformedResponse(
                "data with no request in flight",
            )));
        }
        if rbuf.len() > MAX_REPLY_BYTES {
            return SessionEnd::Failed(BackendError::BadResponse(MalformedResponse(
                "reply too large",
            )));
        }
        if rbuf.is_empty() && rbuf.capacity() > SHRINK_ABOVE {
            rbuf = BytesMut::with_capacity(READ_CHUNK);
        }
        rbuf.reserve(READ_CHUNK);
        if idle {
            // Nothing to time out; watch for the backend closing, and for
            // the first request (which starts the read timeout).
            tokio::select! {
                read = rd.read_buf(&mut rbuf) => match read {
                    Ok(0) | Err(_) => {
                        return if slot.queue.borrow().is_empty() {
                            SessionEnd::Idle
                        } else {
                            SessionEnd::Failed(BackendError::Closed)
                        };
                    }
                    Ok(n) => slot.received(inner, n),
                },
                _ = slot.wake_reader.notified() => {}
            }
        } else {
            // Requests are in flight: the oldest must be answered within
            // read_timeout of being sent, however the bytes trickle in.
            let sent = slot
                .queue
                .borrow()
                .front()
                .map_or(connected_at, |p| p.queued_at.max(connected_at));
            match timeout_at(sent + read_timeout, rd.read_buf(&mut rbuf)).await {
                Ok(Ok(0)) => return SessionEnd::Failed(BackendError::Closed),
                Ok(Ok(n)) => slot.received(inner, n),
                Ok(Err(e)) => return SessionEnd::Failed(BackendError::io(e)),
                Err(_) => {
                    inner.counters.timeouts.incr();
                    return SessionEnd::Failed(BackendError::Timeout);
                }
            }
        }
    }
}

/// The reply of a request whose reply held a value over the size limit:
/// the values that fit (of a multi-key `get`), then the error that ends a
/// `get` reply memcached cannot hold.
fn oversize_reply(mut raw: BytesMut, decoder: ResponseDecoder) -> Response {
    if raw.is_empty() {
        return Response::from_line(OVERSIZE_REPLY);
    }
    raw.extend_from_slice(OVERSIZE_REPLY.as_bytes());
    raw.extend_from_slice(b"\r\n");
    match decoder.decode(&mut raw) {
        Ok(Some(response)) => response,
        _ => Response::from_line(OVERSIZE_REPLY),
    }
}

impl Inner {
    /// Counts one failure (with `depth` requests failed by it) against the
    /// backend's health, logging a change.
    pub(crate) fn record_failure(&self, error: &BackendError, depth: usize) {
        self.counters.failures.incr();
        // As memcached: a failure is logged to `watch proxyevents` unless
        // the backend is already known bad.
        if !self.is_bad() && crate::watch::enabled(crate::watch::PROXYEVENTS) {
            self.log_failure(error, depth);
        }
        let outcome = self
            .health
            .borrow_mut()
            .failure(&self.config, Instant::now());
        match outcome {
            FailureOutcome::MarkedBad { wait, flaps } => {
                self.counters.marked_bad.incr();
                self.counters.bad.store(true, Relaxed);
                if crate::watch::enabled(crate::watch::PROXYEVENTS) {
                    self.log_marked_bad(wait, flaps);
                }
                warn!(
                    backend = %self.config.label,
                    %error,
                    retry_in = ?wait,
                    flaps,
                    "backend marked bad"
                )
            }
            FailureOutcome::StillBad { wait } => debug!(
                backend = %self.config.label,
                %error,
                retry_in = ?wait,
                "backend still bad"
            ),
            FailureOutcome::Counted => {}
        }
    }

    /// `type=proxy_backend error=... name= port= label= depth= rbuf=`, with
    /// memcached's word for the failure. (memroute keeps no unread bytes of
    /// a failed connection: `rbuf` is empty.)
    fn log_failure(&self, error: &BackendError, depth: usize) {
        let word = match error {
            BackendError::Connect(e) if e.kind() == io::ErrorKind::TimedOut => {
                if e.to_string().contains("version") {
                    "readvalidate"
                } else {
                    "conntimeout"
                }
            }
            BackendError::Connect(e) if e.kind() == io::ErrorKind::InvalidData => "badvalidate",
            BackendError::Connect(_) => "connecting",
            BackendError::Timeout => "timeout",
            BackendError::Io(_) => "reading",
            BackendError::BadResponse(_) => "parsing",
            BackendError::Closed => "disconnected",
            // Not failures of the backend.
            BackendError::Down | BackendError::Busy | BackendError::DepthLimit => return,
        };
        let config = &self.config;
        crate::watch::log(crate::watch::PROXYEVENTS, |line| {
            let _ = write!(
                line,
                "type=proxy_backend error={word} name={} port={} label={} depth={depth} rbuf=",
                config.host, config.port, config.label
            );
        });
    }

    /// `type=proxy_backend error=markedbad ... retry=<seconds>`
    /// (`markedbadflap` when the backend is flapping).
    fn log_marked_bad(&self, wait: std::time::Duration, flaps: u32) {
        let word = if flaps > 0 {
            "markedbadflap"
        } else {
            "markedbad"
        };
        let config = &self.config;
        crate::watch::log(crate::watch::PROXYEVENTS, |line| {
            let _ = write!(
                line,
                "type=proxy_backend error={word} name={} port={} label={} retry={}",
                config.host,
                config.port,
                config.label,
                wait.as_secs()
            );
        });
    }

    fn record_reply(&self, latency: std::time::Duration) {
        self.counters.responses.incr();
        self.health.borrow_mut().success();
        self.counters.latency.record(latency);
    }
}

/// The op and key of a request that may join (or start) a joined line: a
/// `get` or `gets` with exactly one key.
fn joinable(request: &Request) -> Option<(GetOp, &Bytes)> {
    match request.command() {
        Command::Get(g) if matches!(g.op, GetOp::Get | GetOp::Gets) && g.keys.len() == 1 => {
            Some((g.op, &g.keys[0]))
        }
        _ => None,
    }
}
