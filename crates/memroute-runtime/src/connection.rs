//! One client connection: read, decode, execute, reply, in order.
//!
//! A connection speaks text and meta, or binary (its first byte decides,
//! unless `-B` fixes it). Binary requests arrive here already translated
//! into meta requests, with a context that encodes their replies back (see
//! `memroute_proto::binary`), so everything below is protocol-blind.
//!
//! A `Connection` owns one client's stream, buffers, codec and pipeline
//! of routed replies. Its loop is "decode every complete request in the
//! buffer, execute each, append replies to one write buffer, write it once,
//! then read more" (`take_requests`, `write_replies`, a read), so a
//! pipelined batch costs one `write` however many requests it holds, and
//! replies always leave in request order.
//!
//! Requests served by the embedded cache complete at once. Requests with a
//! route become futures that run concurrently (their backend requests
//! are batched per backend connection); their replies are still written in
//! request order. A request served locally behind routed ones is not run
//! until they have all answered: it may read what they wrote (a `get`
//! behind a `set` routed to `mcp.internal`, `stats proxy` behind routed
//! requests), so running it early would answer from the past.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use memroute_proto::binary::{BinaryContext, BinaryDecoder, BinaryFrame, REQUEST_MAGIC};
use memroute_proto::{
    Command, Decoded, GetCommand, Limits, MetaOp, ProtocolError, Request, RequestDecoder,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::config::Protocol;
use crate::embedded::{Embedded, Flow};
use crate::route::{
    multiget, ListenerTag, Reply, ReplyFuture, Route, RouteSet, WorkerLimits, WorkerRoutes,
};
use crate::stats::{Outcome, RouteCounters, ServerStats, WorkerLoad, WorkerStats};

thread_local! {
    /// The file descriptor of the client socket whose task is being polled
    /// (memcached's `rctx:cfd()`); `None` outside one. A plain cell set
    /// around each poll by [`ClientFd`]: a tokio task-local cost about 190
    /// instructions per pooled get (it swaps a `RefCell` in and out at
    /// every poll), this about 20.
    static CLIENT_FD: Cell<Option<std::os::fd::RawFd>> = const { Cell::new(None) };
}

/// The client socket's file descriptor of the connection this task serves,
/// if it serves one.
pub fn current_client_fd() -> Option<std::os::fd::RawFd> {
    CLIENT_FD.with(Cell::get)
}

/// A future polled with [`CLIENT_FD`] set to its connection's socket.
pub struct ClientFd<F> {
    fd: Option<std::os::fd::RawFd>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for ClientFd<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let previous = CLIENT_FD.with(|c| c.replace(self.fd));
        let polled = self.inner.as_mut().poll(cx);
        CLIENT_FD.with(|c| c.set(previous));
        polled
    }
}

/// Runs `future` (a whole connection) with `fd` as its client socket.
pub fn with_client_fd<F: Future>(fd: std::os::fd::RawFd, future: F) -> ClientFd<F> {
    ClientFd {
        fd: Some(fd),
        inner: Box::pin(future),
    }
}

/// Wraps `future`, about to be spawned as a task of its own on behalf of
/// the current connection (a route's background work), so that it still
/// sees the connection's client socket.
pub fn keep_client_fd<F: Future>(future: F) -> ClientFd<F> {
    ClientFd {
        fd: current_client_fd(),
        inner: Box::pin(future),
    }
}

/// Bytes reserved per read.
const READ_CHUNK: usize = 16 * 1024;
/// Replies are flushed mid-batch past this size, so a huge pipeline of gets
/// cannot grow the write buffer without bound.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Buffers that grew past this (a large value) are released once idle.
const SHRINK_ABOVE: usize = 256 * 1024;
/// Routed requests in flight per connection before decoding pauses
/// (memcached proxy's active request limit plays the same role).
const MAX_IN_FLIGHT: usize = 1024;

/// The most keys of a multi-key get one window sends through a route that
/// serves each key on its own (a Lua route, a funcgen; see [`MultiGet`]).
/// A window is one pipeline entry and one future, which is what makes a
/// 10-key get cheap, but its replies are merged into one buffer before
/// they are written: 16 values of 1 MB are a 16 MB copy at most.
const SERVED_KEYS_PER_WINDOW: usize = 16;
/// During shutdown, how long a connection waits for the rest of a request
/// the client has started sending.
const CLOSING_READ_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What a worker shares with all of its connections.
pub struct WorkerContext {
    pub executor: Embedded,
    pub server_stats: Arc<ServerStats>,
    pub worker: usize,
    pub limits: Limits,
    /// Which protocols clients may speak (`-B`).
    pub protocol: Protocol,
    /// This worker's routes, when a startfile is configured.
    pub routes: Option<Rc<WorkerRoutes>>,
    /// Idle clients are closed after this (`-o idle_timeout`).
    pub idle_timeout: Option<std::time::Duration>,
    /// Reply bytes held for one client at most.
    pub client_buffer_limit: usize,
    /// Client authentication (`-Y`, `-S`), when on.
    pub auth: Option<Arc<crate::auth::Auth>>,
}

impl WorkerContext {
    /// This worker's counters.
    pub fn stats(&self) -> &WorkerStats {
        self.server_stats.worker(self.worker)
    }

    /// This worker's route counters, by route slot.
    fn route_stats(&self) -> &[RouteCounters] {
        self.server_stats.routes(self.worker)
    }
}

/// A routed reply to count in its route's outcomes once it is taken to be
/// written: its route's counters, and whether it is binary-encoded.
#[derive(Debug, Clone, Copy)]
struct Counted<'a> {
    route: &'a RouteCounters,
    binary: bool,
}

impl Counted<'_> {
    #[inline]
    fn count(self, reply: &[u8]) {
        self.route.count(if self.binary {
            Outcome::of_binary(reply)
        } else {
            Outcome::of_text(reply)
        });
    }
}

/// How a connection's client speaks, told by its first byte as memcached
/// tells it: binary requests start with 0x80, text ones never do. (One per
/// connection, in place: its size does not matter.)
#[allow(clippy::large_enum_variant)]
enum Codec {
    Undecided,
    Text(RequestDecoder),
    Binary(BinaryDecoder),
}

/// One thing the client sent, whatever its protocol. Moved once, straight
/// to dispatch (boxing would cost an allocation per request).
#[allow(clippy::large_enum_variant)]
enum Frame {
    /// A request to run; binary ones carry how to encode the reply.
    Request(Request, Option<BinaryContext>),
    /// A text request the decoder refused.
    Error(ProtocolError),
    /// A binary reply made by the decoder itself; `close` after it.
    Reply { bytes: Bytes, close: bool },
    /// A binary store refused as too large (its reply is made).
    TooLarge { key: Bytes, reply: Bytes },
}

impl Codec {
    fn next(&mut self, ctx: &WorkerContext, rbuf: &mut BytesMut) -> Option<Frame> {
        if let Codec::Undecided = self {
            let binary = match ctx.protocol {
                Protocol::Auto => *rbuf.first()? == REQUEST_MAGIC,
                Protocol::Ascii => false,
                Protocol::Binary => true,
            };
            let limits = ctx.limits.clone();
            *self = if binary {
                Codec::Binary(BinaryDecoder::new(limits))
            } else {
                Codec::Text(RequestDecoder::new(limits))
            };
        }
        match self {
            Codec::Undecided => None,
            Codec::Text(decoder) => Some(match decoder.decode(rbuf)? {
                Decoded::Request(request) => Frame::Request(request, None),
                Decoded::Error(error) => Frame::Error(error),
            }),
            Codec::Binary(decoder) => Some(match decoder.decode(rbuf) {
                Ok(None) => return None,
                Ok(Some(BinaryFrame::Request(request, bin))) => Frame::Request(request, Some(bin)),
                Ok(Some(BinaryFrame::Reply { bytes, close })) => Frame::Reply { bytes, close },
                Ok(Some(BinaryFrame::TooLarge { key, reply })) => Frame::TooLarge { key, reply },
                // Not binary protocol after all, or lengths that cannot be
                // trusted: answer if possible, and close.
                Err(e) => Frame::Reply {
                    bytes: e.reply.unwrap_or_default(),
                    close: true,
                },
            }),
        }
    }

    /// Whether part of a request has arrived and the rest is awaited.
    fn is_mid_request(&self, rbuf: &BytesMut) -> bool {
        match self {
            Codec::Text(decoder) => decoder.is_mid_request(),
            Codec::Binary(decoder) => decoder.is_mid_request(rbuf),
            Codec::Undecided => !rbuf.is_empty(),
        }
    }
}

/// Bytes a routed retrieval's reply may need beyond its value: the
/// `VALUE` line (a 250-byte key, flags, length, cas) and `END`.
const VALUE_OVERHEAD: usize = 512;

/// Routed replies not yet written, in request order, and what each holds
/// of the client's reply budget (`client_buffer_limit`).
///
/// A routed retrieval reserves room for the largest value it may bring
/// (the item size limit) when it is sent, and gives it back once its reply
/// is written: so memroute never holds more than the budget for one
/// client, however many keys it asks for and however slowly it reads.
/// Requests that do not fit wait (the connection stops decoding) until
/// earlier replies are written.
///
/// The replies are `oldest`, then `finished`, then `ordered`. A reply
/// queued when nothing else is (a client sending one request at a time,
/// the usual case) becomes `oldest` and is polled directly: in
/// `FuturesOrdered` it would cost a task allocation and wake-up
/// bookkeeping.
struct Pipeline<'a> {
    oldest: Option<Reply>,
    /// Replies of `ordered` that came out while `oldest` was still
    /// pending (they wait their turn here).
    finished: VecDeque<Bytes>,
    ordered: FuturesOrdered<Reply>,
    /// Bytes reserved by each reply, whether it counts as an active
    /// routed request, and the route it counts in, in the same order.
    reserved: VecDeque<(usize, bool, Option<Counted<'a>>)>,
    /// Their sum.
    held: usize,
    limit: usize,
    /// The worker's gauges this pipeline's entries count in.
    load: &'a WorkerLoad,
    /// `quit` arrived behind routed requests: close once they are answered.
    close_after: bool,
    /// The newest reply has not been polled yet (see [`Pipeline::drive`]).
    newest_unpolled: bool,
}

/// Why the worker refused a routed request (the proxy's limits).
enum Refusal {
    /// `mcp.active_req_limit`.
    Active,
    /// `mcp.buffer_memory_limit`.
    Buffer,
}

impl Refusal {
    /// memcached proxy's reply for it.
    fn reply(&self) -> &'static [u8] {
        match self {
            Refusal::Active => b"SERVER_ERROR active request limit reached\r\n",
            Refusal::Buffer => b"SERVER_ERROR out of memory\r\n",
        }
    }

    fn count(&self, stats: &WorkerStats) {
        match self {
            Refusal::Active => stats.proxy_request_failed_active.incr(),
            Refusal::Buffer => stats.proxy_request_failed_bufmem.incr(),
        }
    }
}

impl<'a> Pipeline<'a> {
    fn new(limit: usize, load: &'a WorkerLoad) -> Self {
        Pipeline {
            oldest: None,
            finished: VecDeque::new(),
            ordered: FuturesOrdered::new(),
            reserved: VecDeque::new(),
            held: 0,
            limit,
            load,
            close_after: false,
            newest_unpolled: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.reserved.is_empty()
    }

    /// Polls every reply once, keeping what is ready, if the newest has
    /// not been polled yet.
    ///
    /// A reply future sends its backend requests when it is made (a
    /// pool's) or when first polled (a Lua route's, a multi-key get's): so
    /// that backends see requests in the client's order, the connection
    /// drives the replies queued so far before it makes the next one.
    /// (A client sending one request at a time never pays for it.)
    async fn drive(&mut self) {
        if !self.newest_unpolled {
            return;
        }
        self.newest_unpolled = false;
        std::future::poll_fn(|cx| {
            if let Some(oldest) = self.oldest.as_mut() {
                if let Poll::Ready(bytes) = Pin::new(oldest).poll(cx) {
                    self.oldest = None;
                    // (What `finished` holds came after it.)
                    self.finished.push_front(bytes);
                }
            }
            self.drain_ordered(cx);
            Poll::Ready(())
        })
        .await
    }

    /// Moves what `ordered` has ready, in order, to `finished`.
    fn drain_ordered(&mut self, cx: &mut Context<'_>) {
        while !self.ordered.is_empty() {
            match self.ordered.poll_next_unpin(cx) {
                Poll::Ready(Some(bytes)) => self.finished.push_back(bytes),
                _ => break,
            }
        }
    }

    /// The next reply in request order, once it is ready. Only for a
    /// pipeline that is not empty.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        if let Some(oldest) = self.oldest.as_mut() {
            if let Poll::Ready(bytes) = Pin::new(oldest).poll(cx) {
                self.oldest = None;
                return Poll::Ready(bytes);
            }
            // Keep the replies behind it moving (a Lua route runs only
            // while polled).
            self.drain_ordered(cx);
            return Poll::Pending;
        }
        if let Some(bytes) = self.finished.pop_front() {
            return Poll::Ready(bytes);
        }
        self.ordered
            .poll_next_unpin(cx)
            .map(|next| next.expect("poll_next on an empty pipeline"))
    }

    /// How many more replies of `each` bytes may join now. An empty
    /// pipeline takes at least one, so every request makes progress.
    fn room_for(&self, each: usize) -> usize {
        let slots = MAX_IN_FLIGHT.saturating_sub(self.reserved.len());
        let bytes = self.limit.saturating_sub(self.held) / each.max(1);
        let room = slots.min(bytes);
        if self.is_empty() {
            room.max(1)
        } else {
            room
        }
    }

    /// Whether the worker's limits let one more routed request, reserving
    /// `reserve` bytes, start now.
    fn admit(&self, limits: WorkerLimits, reserve: usize) -> Result<(), Refusal> {
        if limits
            .active_requests
            .is_some_and(|max| self.load.active.get() >= max)
        {
            return Err(Refusal::Active);
        }
        if self.buffer_free(limits) < reserve {
            return Err(Refusal::Buffer);
        }
        Ok(())
    }

    /// Bytes the worker may still reserve for replies.
    fn buffer_free(&self, limits: WorkerLimits) -> usize {
        limits.buffer_bytes.map_or(usize::MAX, |max| {
            usize::try_from(max.saturating_sub(self.load.buffered.get())).unwrap_or(usize::MAX)
        })
    }

    /// Queues a reply; `active` for a routed request (not a ready line).
    fn push(&mut self, reply: ReplyFuture, reserve: usize, active: bool) {
        self.push_counted(Reply::Boxed(reply), reserve, active, None);
    }

    /// [`push`](Self::push), counting the reply in a route's outcomes
    /// when it is taken.
    fn push_counted(
        &mut self,
        reply: Reply,
        reserve: usize,
        active: bool,
        counted: Option<Counted<'a>>,
    ) {
        if self.is_empty() {
            self.oldest = Some(reply);
        } else {
            self.ordered.push_back(reply);
        }
        self.newest_unpolled = true;
        self.reserved.push_back((reserve, active, counted));
        self.held += reserve;
        self.load.buffered.add(reserve as u64);
        self.load.active.add(u64::from(active));
    }

    /// The oldest reply was taken (to be written): its room goes back.
    /// Answers the route it counts in, if any.
    fn release_oldest(&mut self) -> Option<Counted<'a>> {
        let (bytes, active, counted) = self.reserved.pop_front()?;
        self.held -= bytes;
        self.load.buffered.sub(bytes as u64);
        self.load.active.sub(u64::from(active));
        counted
    }
}

impl Drop for Pipeline<'_> {
    /// A connection that ends with replies pending gives their room back.
    fn drop(&mut self) {
        while !self.reserved.is_empty() {
            self.release_oldest();
        }
    }
}

/// A routed multi-key get being sent a window of keys at a time, as the
/// client's reply budget allows; its reply is streamed in key order.
struct MultiGet<'a> {
    routes: Rc<RouteSet>,
    route: Rc<dyn Route>,
    /// The counters of the route slot it counts in.
    stats: Option<&'a RouteCounters>,
    get: GetCommand,
    /// Keys before this one have been sent.
    next: usize,
}

/// Why a connection ended, as memcached's `watch connevents` names it
/// (`reason=` of `type=conn_close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A read or write failed, or a protocol error closed it.
    Error,
    /// The client closed it, or sent `quit`.
    Normal,
    /// No request for `idle_timeout`.
    IdleTimeout,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Error => "error",
            CloseReason::Normal => "normal",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Serves one client until it disconnects, sends `quit`, breaks the
/// protocol beyond repair, stays idle past `-o idle_timeout`, or the server
/// shuts down (after the request in flight is answered).
///
/// The stream is a TCP connection, a TLS session over one (`-Z`) or a UNIX
/// socket connection (`-s`); the loop is compiled for each, so plain TCP
/// pays nothing for TLS. `tag` is the tag of the listener that accepted
/// it, which picks its route table.
pub async fn serve<S>(
    mut stream: S,
    ctx: Rc<WorkerContext>,
    tag: ListenerTag,
    shutdown: watch::Receiver<bool>,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut shutdown = shutdown;
    // With -Y or -S, nothing but the authentication exchange is served
    // until the client has passed it (see crate::auth).
    if let Some(auth) = ctx.auth.as_deref() {
        if !crate::auth::authenticate(&mut stream, &mut rbuf, &ctx, auth, &mut shutdown).await {
            return CloseReason::Error;
        }
    }
    Connection::new(stream, rbuf, &ctx, tag).run(shutdown).await
}

/// One client connection's state: its stream and buffers, the codec its
/// client speaks, and the pipeline of routed replies owed to it, in order.
struct Connection<'a, S> {
    stream: S,
    ctx: &'a WorkerContext,
    /// The listener it came in on (which routes serve it).
    tag: ListenerTag,
    rbuf: BytesMut,
    wbuf: BytesMut,
    codec: Codec,
    pipeline: Pipeline<'a>,
    /// What a routed retrieval reserves of the reply budget.
    per_value: usize,
    /// A request waiting for room, or (run locally) for the routed ones
    /// before it to finish.
    held: Option<(Request, Option<BinaryContext>)>,
    /// A routed multi-key get being sent a window at a time.
    multi: Option<MultiGet<'a>>,
    /// This worker's route counters, by route slot.
    route_stats: &'a [RouteCounters],
    /// Why it closes once its replies are written (`quit`, or a protocol
    /// error that ends the connection).
    close_reason: CloseReason,
}

/// What one pass over the buffered requests ended with.
#[derive(Default)]
struct Batch {
    /// The connection closes once the replies are written.
    close: bool,
    /// Requests wait in the buffer for room: handle them before reading.
    paused: bool,
    /// At least one whole request arrived (the idle timer restarts).
    took_request: bool,
    /// `watch` was accepted: once the replies are written, the connection
    /// only streams log lines.
    watch: Option<crate::watch::WatcherGuard>,
}

/// What handling one frame asks of the loop.
enum Next {
    Continue,
    /// Stop taking requests until the replies so far are written.
    Pause,
    /// Close after the replies so far.
    Close,
    /// The client is gone (a write failed).
    Gone,
    /// `watch` was accepted: stop taking requests and stream log lines.
    Watch(crate::watch::WatcherGuard),
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Connection<'a, S> {
    fn new(stream: S, rbuf: BytesMut, ctx: &'a WorkerContext, tag: ListenerTag) -> Self {
        Connection {
            stream,
            ctx,
            tag,
            rbuf,
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            codec: Codec::Undecided,
            pipeline: Pipeline::new(ctx.client_buffer_limit, ctx.server_stats.load(ctx.worker)),
            per_value: ctx.limits.max_item_size.saturating_add(VALUE_OVERHEAD),
            held: None,
            multi: None,
            route_stats: ctx.route_stats(),
            close_reason: CloseReason::Normal,
        }
    }

    /// "Take every request buffered, write the replies, read more", until
    /// the connection ends.
    async fn run(mut self, shutdown: watch::Receiver<bool>) -> CloseReason {
        let ctx = self.ctx;
        let mut closing = *shutdown.borrow();
        let mut shutdown_signal = std::pin::pin!(ShutdownSignal::new(shutdown));
        // Closes the connection once no request has arrived for
        // idle_timeout (made only when configured: no timer on the default
        // path).
        let mut idle = ctx
            .idle_timeout
            .map(|t| (t, Box::pin(tokio::time::sleep(t))));
        loop {
            let Some(batch) = self.take_requests().await else {
                return CloseReason::Error;
            };
            if !self.write_replies().await {
                return CloseReason::Error;
            }
            let close = batch.close || self.pipeline.close_after;
            if !self.wbuf.is_empty() && !self.flush().await {
                return CloseReason::Error;
            }
            if let Some(guard) = batch.watch {
                // (Once shutting down, the signal has fired: nothing to
                // stream, the connection closes.)
                let reason = if closing {
                    CloseReason::Shutdown
                } else {
                    self.stream_logs(guard, shutdown_signal.as_mut()).await
                };
                let _ = self.stream.shutdown().await;
                return reason;
            }
            let waiting = self.held.is_some() || self.multi.is_some();
            let drained = self.rbuf.is_empty() && !self.codec.is_mid_request(&self.rbuf);
            if close || (closing && !waiting && drained) {
                let _ = self.stream.shutdown().await;
                return if close {
                    self.close_reason
                } else {
                    CloseReason::Shutdown
                };
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > SHRINK_ABOVE {
                self.rbuf = BytesMut::with_capacity(READ_CHUNK);
            }
            // Requests already buffered (decoding paused for room) are
            // handled before reading more.
            if batch.paused {
                continue;
            }
            if batch.took_request {
                if let Some((timeout, timer)) = idle.as_mut() {
                    timer.as_mut().reset(tokio::time::Instant::now() + *timeout);
                }
            }
            self.rbuf.reserve(READ_CHUNK);
            tokio::select! {
                // Reads first, and no random branch order to pay for.
                biased;
                read = self.stream.read_buf(&mut self.rbuf) => match read {
                    Ok(0) => return CloseReason::Normal,
                    Err(_) => return CloseReason::Error,
                    Ok(n) => ctx.stats().bytes_read.add(n as u64),
                },
                _ = &mut shutdown_signal, if !closing => closing = true,
                // Shutting down with a request half received: give the
                // client a moment to finish it, but a stalled client cannot
                // hold the shutdown.
                // (select! builds every branch's future even when disabled;
                // the async block keeps the timer off the per-read path.)
                _ = async { tokio::time::sleep(CLOSING_READ_GRACE).await }, if closing => {
                    let _ = self.stream.shutdown().await;
                    return CloseReason::Shutdown;
                }
                // No request for idle_timeout (bytes that never make a
                // whole request do not count, as in memcached): the slot
                // goes back.
                _ = async { idle.as_mut().expect("idle timer").1.as_mut().await }, if idle.is_some() => {
                    ctx.stats().idle_kicks.incr();
                    let _ = self.stream.shutdown().await;
                    return CloseReason::IdleTimeout;
                }
            }
        }
    }

    /// Handles every complete request in the read buffer (or up to the
    /// first that must wait); `None` once the client is gone.
    async fn take_requests(&mut self) -> Option<Batch> {
        let mut batch = Batch::default();
        loop {
            if self.pipeline.close_after {
                break;
            }
            let next = if self.multi.is_some() {
                self.next_window().await
            } else {
                let frame = match self.held.take() {
                    Some((request, bin)) => Frame::Request(request, bin),
                    None => match self.codec.next(self.ctx, &mut self.rbuf) {
                        Some(frame) => frame,
                        None => break,
                    },
                };
                batch.took_request = true;
                // The replies queued so far get their first poll before
                // anything else is sent (see `Pipeline::drive`); doing it
                // here, for every kind of frame, keeps the await out of
                // the routed path below, which then moves the request
                // straight on instead of through an async call's state.
                self.pipeline.drive().await;
                let routed = match &frame {
                    Frame::Request(request, bin)
                        if bin.is_some() || !matches!(request.command(), Command::Watch { .. }) =>
                    {
                        route_for(self.ctx, self.tag, request)
                    }
                    _ => None,
                };
                match (frame, routed) {
                    (Frame::Request(request, bin), Some((routes, route, slot))) => {
                        self.route(routes, route, slot, request, bin)
                    }
                    (frame, _) => self.dispatch(frame).await,
                }
            };
            match next {
                Next::Continue => {}
                Next::Pause => {
                    batch.paused = true;
                    break;
                }
                Next::Close => {
                    batch.close = true;
                    break;
                }
                Next::Gone => return None,
                Next::Watch(guard) => {
                    batch.watch = Some(guard);
                    break;
                }
            }
            if self.wbuf.len() >= WRITE_HIGH_WATER && !self.flush().await {
                return None;
            }
        }
        Some(batch)
    }

    /// Sends the next window of a routed multi-key get's keys, as many as
    /// the reply budgets allow, or ends its reply.
    async fn next_window(&mut self) -> Next {
        let Some(mg) = self.multi.as_mut() else {
            return Next::Continue;
        };
        let left = mg.get.keys.len() - mg.next;
        if left == 0 {
            if let Some(stats) = mg.stats {
                stats.count(Outcome::Ok);
            }
            self.multi = None;
            self.queue(Bytes::from_static(b"END\r\n"));
            return Next::Continue;
        }
        let per_value = self.per_value;
        // As many keys as the budgets allow go in one window (each
        // reserves a value's worth), and at most SERVED_KEYS_PER_WINDOW
        // through a route that serves each key on its own.
        let per_window = if mg.route.joins_keys() {
            left
        } else {
            SERVED_KEYS_PER_WINDOW
        };
        let worker_room = self.pipeline.buffer_free(mg.routes.limits()) / per_value.max(1);
        let n = per_window
            .min(left)
            .min(self.pipeline.room_for(per_value))
            .min(worker_room);
        if n == 0 {
            if worker_room == 0 && self.pipeline.is_empty() {
                // The worker's other clients hold its whole buffer: end
                // the reply as memcached ends a get it cannot hold.
                Refusal::Buffer.count(self.ctx.stats());
                if let Some(stats) = mg.stats {
                    stats.count(Outcome::Error);
                }
                self.multi = None;
                self.queue(Bytes::from_static(
                    b"SERVER_ERROR out of memory writing get response\r\n",
                ));
                return Next::Continue;
            }
            return Next::Pause;
        }
        self.pipeline.drive().await;
        let Some(mg) = self.multi.as_mut() else {
            return Next::Continue;
        };
        let keys = &mg.get.keys[mg.next..mg.next + n];
        let reply = multiget::window(&mg.route, &mg.get, keys);
        mg.next += n;
        self.pipeline.push(reply, n * per_value, true);
        Next::Continue
    }

    /// Handles one thing the client sent.
    async fn dispatch(&mut self, frame: Frame) -> Next {
        let ctx = self.ctx;
        match frame {
            Frame::Request(request, None) if matches!(request.command(), Command::Watch { .. }) => {
                self.start_watch(&request)
            }
            Frame::Request(request, bin) => match route_for(ctx, self.tag, &request) {
                Some((routes, route, slot)) => self.route(routes, route, slot, request, bin),
                None if !self.pipeline.is_empty() => {
                    // Run it once the routed requests before it are done.
                    self.held = Some((request, bin));
                    Next::Pause
                }
                None => {
                    if let (Command::Get(get), None) = (request.command(), &bin) {
                        if get.keys.len() > 1 {
                            let sent =
                                stream_local_get(&mut self.stream, &mut self.wbuf, ctx, get).await;
                            return if sent { Next::Continue } else { Next::Gone };
                        }
                    }
                    match run_local(ctx, request, bin, &mut self.wbuf) {
                        Flow::Close => Next::Close,
                        _ => Next::Continue,
                    }
                }
            },
            Frame::Reply { bytes, close } => {
                self.queue(bytes);
                if close {
                    self.close_after_replies()
                } else {
                    Next::Continue
                }
            }
            Frame::TooLarge { key, reply } => {
                // (A routed delete may follow: the requests before it have
                // been driven, see `take_requests`.)
                match refused_too_large(ctx, self.tag, &key, true) {
                    Some(delete) => self.pipeline.push(after(delete, reply), 0, true),
                    None => self.queue(reply),
                }
                Next::Continue
            }
            Frame::Error(error) => {
                let delete = match &error {
                    ProtocolError::TooLarge {
                        key,
                        drops_existing,
                        ..
                    } => refused_too_large(ctx, self.tag, key, *drops_existing),
                    _ => None,
                };
                // The decoder's error line (an `ErrorReply` text), if one
                // is sent.
                let mut bytes = BytesMut::new();
                if let Some(line) = error.reply_line() {
                    memroute_proto::reply::line(&mut bytes, line);
                }
                match delete {
                    Some(delete) => self.pipeline.push(after(delete, bytes.freeze()), 0, true),
                    None => self.queue(bytes.freeze()),
                }
                if error.closes() {
                    self.close_reason = CloseReason::Error;
                    self.close_after_replies()
                } else {
                    Next::Continue
                }
            }
        }
    }

    /// A request with a route: into the pipeline, within the reply budget
    /// and the worker's limits. The replies before it must have had their
    /// first poll ([`Pipeline::drive`]).
    ///
    /// The request counts in route slot `slot` (once, a multi-key get
    /// too), and so does its reply's outcome, when it is taken to be
    /// written.
    fn route(
        &mut self,
        routes: Rc<RouteSet>,
        route: Rc<dyn Route>,
        slot: usize,
        request: Request,
        bin: Option<BinaryContext>,
    ) -> Next {
        let ctx = self.ctx;
        let stats = self.route_stats.get(slot);
        if let (Command::Get(get), None) = (request.command(), &bin) {
            if get.keys.len() > 1 {
                if let Some(stats) = stats {
                    stats.requests.incr();
                }
                if let Err(refusal) = self.pipeline.admit(routes.limits(), self.per_value) {
                    refusal.count(ctx.stats());
                    if let Some(stats) = stats {
                        stats.count(Outcome::Error);
                    }
                    self.queue(Bytes::from_static(refusal.reply()));
                    return Next::Continue;
                }
                self.multi = Some(MultiGet {
                    routes,
                    route,
                    stats,
                    get: get.clone(),
                    next: 0,
                });
                return Next::Continue;
            }
        }
        let reserve = reply_reserve(&request, self.per_value);
        if self.pipeline.room_for(reserve) == 0 {
            self.held = Some((request, bin));
            return Next::Pause;
        }
        if let Some(stats) = stats {
            stats.requests.incr();
        }
        if let Err(refusal) = self.pipeline.admit(routes.limits(), reserve) {
            refusal.count(ctx.stats());
            if let Some(stats) = stats {
                stats.count(Outcome::Error);
            }
            if !request.noreply() {
                self.queue(encoded(refusal.reply(), bin.as_ref()));
            }
            return Next::Continue;
        }
        let counted = stats.map(|route| Counted {
            route,
            binary: bin.is_some(),
        });
        let reply = routed_reply(&routes, route, self.tag, request, bin);
        self.pipeline.push_counted(reply, reserve, true, counted);
        Next::Continue
    }

    /// `watch [stream...]`, answered as memcached answers it: `OK` and the
    /// connection becomes a log stream, or an error line and it goes on.
    fn start_watch(&mut self, request: &Request) -> Next {
        let Command::Watch { args } = request.command() else {
            return Next::Continue;
        };
        if !crate::watch::hub().allowed() {
            let reply = crate::watch::WatchError::NotAllowed.reply();
            let mut line = BytesMut::new();
            memroute_proto::reply::line(&mut line, reply);
            self.queue(line.freeze());
            return Next::Continue;
        }
        // memcached refuses a watch behind replies not yet sent: they
        // would be mixed into the log stream.
        if !self.pipeline.is_empty() || !self.wbuf.is_empty() {
            self.queue(Bytes::from_static(
                b"ERROR cannot pipeline other commands before watch\r\n",
            ));
            return Next::Continue;
        }
        let added =
            crate::watch::parse_streams(args.split(|&b| b == b' ').filter(|t| !t.is_empty()))
                .and_then(|streams| crate::watch::hub().add(streams));
        match added {
            Ok(guard) => {
                self.wbuf.extend_from_slice(b"OK\r\n");
                Next::Watch(guard)
            }
            Err(error) => {
                let mut line = BytesMut::new();
                memroute_proto::reply::line(&mut line, error.reply());
                self.queue(line.freeze());
                Next::Continue
            }
        }
    }

    /// Writes log lines to a watching client until it goes away or the
    /// server shuts down. What it sends is read and ignored, as memcached
    /// ignores it; its closing is noticed by the read.
    async fn stream_logs(
        &mut self,
        guard: crate::watch::WatcherGuard,
        mut shutdown: Pin<&mut ShutdownSignal>,
    ) -> CloseReason {
        let watcher = guard.watcher().clone();
        let mut discard = BytesMut::with_capacity(64);
        loop {
            let lines = watcher.take();
            if !lines.is_empty() {
                if self.stream.write_all(&lines).await.is_err()
                    || self.stream.flush().await.is_err()
                {
                    return CloseReason::Error;
                }
                continue;
            }
            tokio::select! {
                _ = watcher.ready.notified() => {}
                read = self.stream.read_buf(&mut discard) => match read {
                    Ok(0) => return CloseReason::Normal,
                    Err(_) => return CloseReason::Error,
                    Ok(_) => discard.clear(),
                },
                _ = &mut shutdown => return CloseReason::Shutdown,
            }
        }
    }

    /// Close now if nothing is owed, else once the pipeline is written.
    fn close_after_replies(&mut self) -> Next {
        if self.pipeline.is_empty() {
            Next::Close
        } else {
            self.pipeline.close_after = true;
            Next::Continue
        }
    }

    /// A reply made here: written now, or after the routed ones before it.
    fn queue(&mut self, bytes: Bytes) {
        queue_or_write(&mut self.pipeline, &mut self.wbuf, bytes);
    }

    /// Collects routed replies in order, writing what is ready before
    /// waiting on the rest; false once the client is gone.
    async fn write_replies(&mut self) -> bool {
        let ctx = self.ctx;
        while !self.pipeline.is_empty() {
            let pipeline = &mut self.pipeline;
            let mut next_reply = std::future::poll_fn(|cx| pipeline.poll_next(cx));
            let bytes = if self.wbuf.is_empty() {
                next_reply.await
            } else {
                match (&mut next_reply).now_or_never() {
                    Some(bytes) => bytes,
                    None => {
                        if !flush(&mut self.stream, &mut self.wbuf, ctx).await {
                            return false;
                        }
                        next_reply.await
                    }
                }
            };
            if let Some(counted) = self.pipeline.release_oldest() {
                counted.count(&bytes);
            }
            if self.wbuf.is_empty() && self.pipeline.is_empty() {
                // The only reply to write: send it as it is, without
                // copying it into the write buffer first.
                if !write_reply(&mut self.stream, &bytes, ctx).await {
                    return false;
                }
                continue;
            }
            self.wbuf.extend_from_slice(&bytes);
            // Many big replies ready at once: write as we go rather than
            // copying all of them first.
            if self.wbuf.len() >= WRITE_HIGH_WATER && !self.flush().await {
                return false;
            }
        }
        true
    }

    async fn flush(&mut self) -> bool {
        flush(&mut self.stream, &mut self.wbuf, self.ctx).await
    }
}

/// Resolves once the shutdown signal changes (or its sender is gone).
///
/// It is polled on every read, so it is one wait for the connection's
/// whole life, and polling it again with the waker it already holds is a
/// version check: a watch's `changed()` would re-register with the channel
/// on each poll.
struct ShutdownSignal {
    probe: watch::Receiver<bool>,
    changed: Pin<Box<dyn Future<Output = ()>>>,
    /// The waker `changed` holds, once it has been polled.
    registered: Option<Waker>,
}

impl ShutdownSignal {
    fn new(mut shutdown: watch::Receiver<bool>) -> ShutdownSignal {
        ShutdownSignal {
            probe: shutdown.clone(),
            changed: Box::pin(async move {
                let _ = shutdown.changed().await;
            }),
            registered: None,
        }
    }
}

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let unchanged = matches!(this.probe.has_changed(), Ok(false));
        if unchanged
            && this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let poll = this.changed.as_mut().poll(cx);
        if poll.is_pending() {
            this.registered = Some(cx.waker().clone());
        }
        poll
    }
}

/// Room a routed request reserves for its reply: a value's worth for a
/// retrieval, nothing for the rest (their replies are a line).
fn reply_reserve(request: &Request, per_value: usize) -> usize {
    match request.command() {
        Command::Get(_) => per_value,
        Command::Meta(m) if m.op == MetaOp::Get => per_value,
        _ => 0,
    }
}

/// A multi-key get served by the embedded cache, written as it is made:
/// past the write buffer's high water the reply so far is sent, so a
/// client asking for one big value thousands of times never makes memroute
/// hold the whole reply (memcached streams it the same way).
async fn stream_local_get<S: AsyncWrite + Unpin>(
    stream: &mut S,
    wbuf: &mut BytesMut,
    ctx: &WorkerContext,
    get: &GetCommand,
) -> bool {
    for key in &get.keys {
        ctx.executor.get_key(get, key, wbuf, ctx.stats());
        if wbuf.len() >= WRITE_HIGH_WATER && !flush(stream, wbuf, ctx).await {
            return false;
        }
    }
    memroute_proto::reply::end(wbuf);
    true
}

/// The route for this request on the current configuration, if any, for
/// a connection on a `tag` listener.
/// With the route slot it counts in.
fn route_for(
    ctx: &WorkerContext,
    tag: ListenerTag,
    request: &Request,
) -> Option<(Rc<RouteSet>, Rc<dyn Route>, usize)> {
    let routes = ctx.routes.as_ref()?.current()?;
    let (route, slot) = routes.lookup(request.command(), tag)?;
    Some((routes, route, slot))
}

/// A routed request's reply on its way; a binary request's is encoded
/// back to binary (`bin`).
fn routed_reply(
    routes: &RouteSet,
    route: Rc<dyn Route>,
    tag: ListenerTag,
    request: Request,
    bin: Option<BinaryContext>,
) -> Reply {
    let reply = routes.serve(route, request, tag);
    match bin {
        None => reply,
        Some(bin) => Reply::Boxed(Box::pin(reply.map(move |text| binary_reply(&bin, &text)))),
    }
}

/// Runs a request on the embedded cache (no routed request is pending);
/// a binary request's typed reply is encoded straight to binary (`bin`).
fn run_local(
    ctx: &WorkerContext,
    request: Request,
    bin: Option<BinaryContext>,
    wbuf: &mut BytesMut,
) -> Flow {
    match bin {
        None => ctx.executor.execute(&request, wbuf, ctx.stats()),
        Some(bin) => ctx
            .executor
            .execute_binary(&request, &bin, wbuf, ctx.stats()),
    }
}

/// A store refused as larger than the item size limit: counted, and, as
/// memcached does, the key's old value is dropped when `drops_existing`:
/// from the embedded cache, or, when storage is routed (the key lives on a
/// backend), by a `delete` sent down the delete route, whose future is
/// returned (the refusal's reply is written once it has run, so the
/// client's next request of the key cannot overtake it).
fn refused_too_large(
    ctx: &WorkerContext,
    tag: ListenerTag,
    key: &[u8],
    drops_existing: bool,
) -> Option<ReplyFuture> {
    ctx.stats().store_too_large.incr();
    if !drops_existing {
        return None;
    }
    let routes = ctx.routes.as_ref().and_then(|r| r.current());
    match routes {
        Some(routes) if routes.routes_storage(tag) => {
            let mut line = b"delete ".to_vec();
            line.extend_from_slice(key);
            let delete = Request::parse(&line, b"", &ctx.limits).ok()?;
            let route = routes.route(delete.command(), tag)?;
            Some(route.serve(delete))
        }
        _ => {
            ctx.executor.drop_stale(key);
            None
        }
    }
}

/// `reply` once `first` has run (its own reply dropped).
fn after(first: ReplyFuture, reply: Bytes) -> ReplyFuture {
    Box::pin(async move {
        first.await;
        reply
    })
}

fn queue_or_write(pipeline: &mut Pipeline, wbuf: &mut BytesMut, bytes: Bytes) {
    if pipeline.is_empty() {
        wbuf.extend_from_slice(&bytes);
    } else {
        pipeline.push(Box::pin(std::future::ready(bytes)), 0, false);
    }
}

/// A reply line made here, in the client's protocol (`bin` for binary).
fn encoded(text: &'static [u8], bin: Option<&BinaryContext>) -> Bytes {
    match bin {
        None => Bytes::from_static(text),
        Some(bin) => binary_reply(bin, &Bytes::from_static(text)),
    }
}

/// A text or meta reply (a backend's, or one made here) encoded back to
/// the binary request it answers; its line is read once into a typed reply.
fn binary_reply(bin: &BinaryContext, text: &Bytes) -> Bytes {
    let mut out = BytesMut::new();
    bin.encode(text, &mut out);
    out.freeze()
}

async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    wbuf: &mut BytesMut,
    ctx: &WorkerContext,
) -> bool {
    let ok = write_reply(stream, wbuf, ctx).await;
    wbuf.clear();
    if wbuf.capacity() > SHRINK_ABOVE {
        *wbuf = BytesMut::with_capacity(READ_CHUNK);
    }
    ok
}

/// Writes `bytes` and flushes: a TLS session may hold encrypted bytes the
/// socket did not take yet (for TCP the flush is a no-op).
async fn write_reply<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    ctx: &WorkerContext,
) -> bool {
    ctx.stats().bytes_written.add(bytes.len() as u64);
    stream.write_all(bytes).await.is_ok() && stream.flush().await.is_ok()
}
