//! The worker-local, pipelined memcached backend client.
//!
//! A [`Backend`] is one memcached server as one worker sees it. Its settings
//! ([`BackendConfig`]) are shared by every worker in an `Arc`; everything
//! else (connections, queues, health, counters) is per worker, `!Send`, and
//! lives in the worker's `LocalSet`, like the rest of the worker.
//!
//! # Requests and replies
//! [`Backend::send`] queues one request on one of the backend's
//! `connections` (chosen by a hash of the request's key, so requests for
//! one key keep their order; round robin for keyless requests) and waits for
//! its reply. memcached answers in order, so each connection keeps a FIFO of
//! the requests it has in flight, each with the
//! [`ResponseDecoder`](memroute_proto::ResponseDecoder) that
//! frames its reply, and hands replies out front to back. The caller must
//! have stripped `noreply` / meta `q`: every request must get exactly one
//! reply.
//!
//! # Batching
//! `send` appends the encoded request to the connection's output buffer and
//! wakes the connection's writer; the writer runs only once the current
//! task yields, then takes the whole buffer and writes it with one
//! `write_all`. Every request issued before the writer runs (all of a
//! scheduler tick's sends to that connection, and everything queued while a
//! previous write was blocked) therefore leaves in one write
//! ([`BackendStats::writes`] counts them). Reader and writer run
//! concurrently, so a big pipelined write stalled on a full socket never
//! keeps us from reading the replies the backend is blocked on.
//!
//! # Bounds and timeouts
//! - At most [`MAX_IN_FLIGHT`] requests are in flight per connection; more
//!   wait their turn for room (backpressure: a burst of 100-key multi-gets
//!   from many clients is slowed, not failed), and fail with
//!   [`BackendError::Busy`] (not a backend failure) after `read_timeout`.
//! - Connecting is bounded by `connect_timeout`; the new connection must
//!   then answer `version` with a `VERSION` line within `read_timeout`.
//! - While requests are in flight, the backend must send reply bytes within
//!   every `read_timeout`, or [`BackendError::Timeout`].
//! - A read timeout, an I/O error, a malformed reply, or the backend closing
//!   the connection fails every request in flight on that connection (with
//!   the same error) and closes it: a connection whose reply stream may be
//!   out of sync is never reused. The slot then reconnects at once.
//! - A caller that stops waiting (drops the `send` future) does not desync
//!   anything: its reply is still read and discarded.
//!
//! # Health
//! See [`health`] for the state machine. In short: each
//! failure event (not each failed request) counts; `failure_limit`
//! consecutive failures with no successful reply in between mark the
//! backend bad; a bad backend fails fast with [`BackendError::Down`] and is
//! probed (connect + `version`) in the background every `retry_wait`,
//! stretched by memcached's flap backoff when it keeps failing soon after
//! recovering. It recovers by itself, even with no traffic. Configured
//! `down` backends are never contacted.
//!
//! # Tasks
//! Nothing is spawned until the first `send`; it then starts one
//! supervisor task per connection slot (with `tokio::task::spawn_local`, so
//! `send` must run inside a `LocalSet`, as the workers do). Connections open
//! on first use, and reopen at once after a failure; an idle connection the
//! backend closes is reopened on next use. Dropping the last
//! `Rc<Backend>` aborts the tasks and closes the connections.
//!
//! # Example
//! ```no_run
//! # async fn demo(request: memroute_proto::Request) {
//! use std::sync::Arc;
//! use memroute_runtime::backend::{Backend, BackendConfig};
//!
//! let backend = Backend::new(Arc::new(BackendConfig::new("127.0.0.1", 11211)));
//! match backend.send(&request).await {
//!     Ok(reply) => println!("{:?}", reply.raw()),
//!     Err(e) => println!("{}", e.client_reply()), // SERVER_ERROR backend failure
//! }
//! # }
//! ```

mod config;
mod conn;
mod error;
pub mod health;
mod reply;
mod room;
mod stats;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use memroute_proto::{Request, Response};
use tokio::task::AbortHandle;

pub use config::{BackendConfig, RequestLog, MAX_CONNECTIONS};
pub use error::BackendError;
pub use stats::{
    BackendRegistry, BackendState, BackendStats, BackendSummary, LatencyHistogram,
    LATENCY_BUCKETS_US,
};

use conn::Slot;
use health::Health;
use reply::ReplyReceiver;
use stats::Counters;

/// Most requests queued or in flight on one connection. Beyond it, `send`
/// waits (in arrival order) for a reply to make room, for at most the
/// backend's read timeout, then fails with [`BackendError::Busy`].
pub const MAX_IN_FLIGHT: usize = 1024;

/// One backend as seen by one worker: owns `connections` pipelined TCP
/// connections (opened lazily, reopened on its own). `!Send`: it lives in
/// the worker's `LocalSet`.
pub struct Backend {
    inner: Rc<Inner>,
}

/// State shared by the [`Backend`] handle and its supervisor tasks.
pub(crate) struct Inner {
    config: Arc<BackendConfig>,
    health: RefCell<Health>,
    counters: Arc<Counters>,
    slots: Vec<Rc<Slot>>,
    next_slot: Cell<usize>,
    tasks: RefCell<Vec<AbortHandle>>,
}

impl Backend {
    /// A backend with no connection yet; nothing happens until the first
    /// [`send`](Self::send).
    pub fn new(config: Arc<BackendConfig>) -> Rc<Backend> {
        let slots = (0..config.connection_count())
            .map(|_| Rc::new(Slot::default()))
            .collect();
        Rc::new(Backend {
            inner: Rc::new(Inner {
                config,
                health: RefCell::default(),
                counters: Arc::default(),
                slots,
                next_slot: Cell::new(0),
                tasks: RefCell::default(),
            }),
        })
    }

    /// Sends one request and waits for its reply.
    ///
    /// Many tasks of the worker may call this concurrently; requests issued
    /// in the same scheduler tick to the same connection go out in one
    /// write, and replies are matched to requests in order. The request is
    /// sent as encoded by [`Request::encode`] and must get exactly one reply
    /// (no `noreply`, no meta `q`). Must be called inside a `LocalSet`.
    ///
    /// Fails fast with [`BackendError::Down`] while the backend is bad or
    /// configured down. When the chosen connection already has
    /// [`MAX_IN_FLIGHT`] requests, waits for room (behind earlier waiters,
    /// so one client's pipelined requests keep their order), and fails with
    /// [`BackendError::Busy`] if none comes within the read timeout.
    ///
    /// The request is queued when `send` is called, not when the future is
    /// first polled: requests keep the order they were sent in, and the
    /// future holds only what waiting for the reply needs (no copy of the
    /// request, no timer), so a caller that boxes it boxes little.
    ///
    /// The caller keeps the backend (an `Rc<Backend>`) until the future is
    /// done: dropping the last one stops the backend's connections, and a
    /// request in flight would then wait for ever.
    pub fn send(&self, request: &Request) -> Sending {
        let inner = &self.inner;
        inner.counters.requests.incr();
        let state = match self.try_enqueue(request) {
            Ok(Enqueued::Queued(reply)) => SendState::Queued(reply),
            Ok(Enqueued::Full(slot)) => {
                let since = std::time::Instant::now();
                let wait = enqueue_when_room(inner.clone(), slot, request.clone());
                SendState::WaitingForRoom(Box::pin(async move { (wait.await, since.elapsed()) }))
            }
            Err(error) => SendState::Failed(Some(error)),
        };
        let logged = match inner.config.request_log {
            Some(_) if crate::watch::enabled(crate::watch::PROXYREQS) => Some(Box::new((
                request.raw_line().clone(),
                std::time::Instant::now(),
            ))),
            _ => None,
        };
        Sending {
            inner: inner.clone(),
            state,
            logged,
            round_trip_us: 0,
        }
    }

    /// Queues `request` if its connection has room now.
    fn try_enqueue(&self, request: &Request) -> Result<Enqueued, BackendError> {
        let inner = &self.inner;
        // The decoder refuses every line that holds a NUL (a backend may
        // end a line there and read two requests where one was sent).
        debug_assert!(
            !request.raw_line().contains(&0),
            "a NUL on its way to a backend"
        );
        self.fail_fast_if_bad()?;
        let depth_limit = inner.config.depth_limit;
        if depth_limit > 0 && inner.counters.in_flight.get() >= depth_limit {
            inner.counters.depth_refused.incr();
            return Err(BackendError::DepthLimit);
        }
        self.start();
        let index = self.pick_slot(request);
        let slot = &inner.slots[index];
        if !slot.try_take_room() {
            return Ok(Enqueued::Full(index));
        }
        Ok(Enqueued::Queued(inner.push(slot, request)))
    }

    fn fail_fast_if_bad(&self) -> Result<(), BackendError> {
        self.inner.fail_fast_if_bad()
    }

    /// Spawns the slots' supervisor tasks, once.
    fn start(&self) {
        let inner = &self.inner;
        if !inner.tasks.borrow().is_empty() {
            return;
        }
        let handles: Vec<AbortHandle> = inner
            .slots
            .iter()
            .map(|slot| {
                tokio::task::spawn_local(conn::supervise(inner.clone(), slot.clone()))
                    .abort_handle()
            })
            .collect();
        *inner.tasks.borrow_mut() = handles;
    }

    /// The connection for `request`: by key hash, so one key's requests
    /// stay in order, or round robin for keyless requests.
    fn pick_slot(&self, request: &Request) -> usize {
        let n = self.inner.slots.len();
        if n == 1 {
            return 0;
        }
        match request.key() {
            Some(key) => (fnv1a(key) % n as u64) as usize,
            None => {
                let next = self.inner.next_slot.get();
                self.inner.next_slot.set(next.wrapping_add(1));
                next % n
            }
        }
    }

    /// The backend's settings.
    pub fn config(&self) -> &Arc<BackendConfig> {
        &self.inner.config
    }

    /// Whether requests currently fail fast: marked bad (until a retry
    /// connects) or configured down.
    pub fn is_bad(&self) -> bool {
        self.inner.is_bad()
    }

    /// A snapshot of this worker's counters for this backend.
    pub fn stats(&self) -> BackendStats {
        let inner = &self.inner;
        let health = inner.health.borrow();
        BackendStats {
            flaps: health.flaps(),
            consecutive_failures: health.consecutive_failures(),
            ..inner.counters.snapshot(&inner.config)
        }
    }

    /// Lists this backend's counters in `registry`, for `stats backends`.
    pub fn register(&self, registry: &BackendRegistry) {
        registry.register(self.inner.config.clone(), &self.inner.counters);
    }
}

/// What [`Backend::try_enqueue`] did.
enum Enqueued {
    Queued(ReplyReceiver),
    /// Connection `.0` (its index) had no room: the request must wait.
    Full(usize),
}

/// Waits (behind earlier waiters, for at most the read timeout) for room
/// on connection `slot`, then queues `request`. Only requests that found
/// their connection full take this path, boxed.
async fn enqueue_when_room(
    inner: Rc<Inner>,
    slot: usize,
    request: Request,
) -> Result<ReplyReceiver, BackendError> {
    let slot = &inner.slots[slot];
    if !slot.take_room(inner.config.read_timeout).await {
        inner.counters.busy.incr();
        return Err(BackendError::Busy);
    }
    if let Err(down) = inner.fail_fast_if_bad() {
        // It went bad while we waited for room.
        slot.room.give(1);
        return Err(down);
    }
    Ok(inner.push(slot, &request))
}

impl Inner {
    fn is_bad(&self) -> bool {
        self.config.down || self.health.borrow().is_bad()
    }

    fn fail_fast_if_bad(&self) -> Result<(), BackendError> {
        if self.is_bad() {
            self.counters.fast_fails.incr();
            return Err(BackendError::Down);
        }
        Ok(())
    }

    /// Queues `request` on `slot`, whose room it holds.
    fn push(&self, slot: &Slot, request: &Request) -> ReplyReceiver {
        let reply = slot.push(request, self.config.batch_gets);
        self.counters.in_flight.add(1);
        reply
    }
}

/// A request sent with [`Backend::send`]: resolves to its reply.
pub struct Sending {
    inner: Rc<Inner>,
    state: SendState,
    /// Set when the backend's `log` option asks for this request while
    /// someone watches `proxyreqs`: its line and when it was sent.
    logged: Option<Box<(bytes::Bytes, std::time::Instant)>>,
    /// Its round trip in microseconds (saturated), once answered (see
    /// [`Sending::round_trip`]); until then, how long it waited for room
    /// on a full connection. (Small: this future lives in every pooled
    /// request's reply, which is moved about.)
    round_trip_us: u32,
}

/// Room waited for: the queued request (or why it was not), and how long
/// the wait took.
type RoomWaited = (Result<ReplyReceiver, BackendError>, Duration);

enum SendState {
    /// Queued: the reply comes through the channel.
    Queued(ReplyReceiver),
    /// Its connection was full: waiting for room, then queued (with how
    /// long it waited).
    WaitingForRoom(Pin<Box<dyn Future<Output = RoomWaited>>>),
    /// Refused before it was queued (taken when the future completes).
    Failed(Option<BackendError>),
}

impl Sending {
    /// The request's round trip once it is answered: from its send to the
    /// read that brought its reply (or to its failure), as the backend's
    /// reader saw it, which is what `res:elapsed()` reports. Zero before
    /// that and for a request refused before it was queued (no time
    /// passed); for one whose connection went away without a word for it,
    /// only its wait for room, if it had one.
    pub fn round_trip(&self) -> Duration {
        Duration::from_micros(self.round_trip_us.into())
    }
}

/// `duration` in whole microseconds, saturated at `u32::MAX` (71 minutes).
fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

impl Future for Sending {
    type Output = Result<Response, BackendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let (result, round_trip) = match &mut this.state {
                SendState::Queued(reply) => match Pin::new(reply).poll(cx) {
                    Poll::Ready(answered) => answered,
                    Poll::Pending => return Poll::Pending,
                },
                SendState::WaitingForRoom(wait) => match wait.as_mut().poll(cx) {
                    Poll::Ready((Ok(reply), waited)) => {
                        this.round_trip_us = micros(waited);
                        this.state = SendState::Queued(reply);
                        continue;
                    }
                    Poll::Ready((Err(error), waited)) => (Err(error), Some(waited)),
                    Poll::Pending => return Poll::Pending,
                },
                SendState::Failed(error) => (
                    Err(error.take().expect("Sending polled after completion")),
                    None,
                ),
            };
            let round_trip = round_trip.map(|r| {
                this.round_trip_us = this.round_trip_us.saturating_add(micros(r));
                Duration::from_micros(this.round_trip_us.into())
            });
            if result.is_err() {
                this.inner.counters.failed_requests.incr();
            }
            if let Some(logged) = this.logged.take() {
                log_request(&this.inner.config, &logged, round_trip, &result);
            }
            return Poll::Ready(result);
        }
    }
}

/// Writes a request of a backend with the `log` option to `watch
/// proxyreqs`, if the option wants it. A failure is logged as the
/// `SERVER_ERROR` line the client gets.
fn log_request(
    config: &BackendConfig,
    (line, sent): &(bytes::Bytes, std::time::Instant),
    round_trip: Option<Duration>,
    result: &Result<Response, BackendError>,
) {
    let Some(log) = &config.request_log else {
        return;
    };
    let elapsed_us = round_trip.unwrap_or_else(|| sent.elapsed()).as_micros() as u64;
    let failure;
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            failure = Response::from_line(error.client_reply());
            &failure
        }
    };
    if !log.wants(Some(response), elapsed_us) {
        return;
    }
    crate::watch::log_proxy_req(&crate::watch::ProxyReq {
        elapsed_us,
        response: Some(response),
        backend: Some((config.host.as_str(), config.port)),
        cfd: 0,
        detail: log.tag.as_bytes(),
        request_line: line,
    });
}

impl Drop for Backend {
    /// Stops the supervisor tasks; their connections close as the tasks are
    /// dropped.
    fn drop(&mut self) {
        for task in self.inner.tasks.borrow_mut().drain(..) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("label", &self.inner.config.label)
            .field("host", &self.inner.config.host)
            .field("port", &self.inner.config.port)
            .field("bad", &self.is_bad())
            .finish()
    }
}

/// FNV-1a, to spread keys over a backend's connections.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
