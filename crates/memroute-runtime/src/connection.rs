//! One client connection: read, decode, execute, reply, in order.
//!
//! A connection speaks text and meta, or binary (its first byte decides,
//! unless `-B` fixes it). Binary requests arrive here already translated
//! into meta requests, with a context that encodes their replies back (see
//! `memroute_proto::binary`), so everything below is protocol-blind.
//!
//! The loop is "decode every complete request in the buffer, execute each,
//! append replies to one write buffer, write it once, then read more", so a
//! pipelined batch costs one `write` however many requests it holds, and
//! replies always leave in request order.
//!
//! Requests served by the embedded cache complete at once. Requests with a
//! Lua route become futures that run concurrently (their backend requests
//! are batched per backend connection); their replies are still written in
//! request order. A request served locally behind routed ones is not run
//! until they have all answered: it may read what they wrote (a `get`
//! behind a `set` routed to `mcp.internal`, `stats proxy` behind routed
//! requests), so running it early would answer from the past.

use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use memroute_proto::binary::{BinaryContext, BinaryDecoder, BinaryFrame, REQUEST_MAGIC};
use memroute_proto::{Decoded, Limits, ProtocolError, Request, RequestDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::Protocol;
use crate::embedded::{Embedded, Flow};
use crate::lua::worker::{ReplyFuture, Route, WorkerLua};
use crate::lua::WorkerProxy;
use crate::stats::{ServerStats, WorkerStats};

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
    /// The Lua routing layer, when a startfile is configured.
    pub proxy: Option<Rc<WorkerProxy>>,
    /// Idle clients are closed after this (`-o idle_timeout`).
    pub idle_timeout: Option<std::time::Duration>,
    /// Reply bytes held for one client at most.
    pub client_buffer_limit: usize,
}

impl WorkerContext {
    /// This worker's counters.
    pub fn stats(&self) -> &WorkerStats {
        self.server_stats.worker(self.worker)
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

/// Replies not yet written, in request order.
struct Pipeline {
    ordered: FuturesOrdered<ReplyFuture>,
    /// `quit` arrived behind routed requests: close once they are answered.
    close_after: bool,
}

/// Serves one client until it disconnects, sends `quit`, breaks the
/// protocol beyond repair, or the server shuts down (after the request in
/// flight is answered).
pub async fn serve(
    mut stream: TcpStream,
    ctx: Rc<WorkerContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut codec = Codec::Undecided;
    let mut pipeline = Pipeline {
        ordered: FuturesOrdered::new(),
        close_after: false,
    };
    let mut closing = *shutdown.borrow();
    // A local request waiting for the routed ones before it to finish.
    let mut held: Option<(Request, Option<BinaryContext>)> = None;
    loop {
        let mut close = false;
        let mut paused = false;
        loop {
            if pipeline.ordered.len() >= MAX_IN_FLIGHT {
                paused = true;
                break;
            }
            if pipeline.close_after {
                break;
            }
            let frame = match held.take() {
                Some((request, bin)) => Frame::Request(request, bin),
                None => match codec.next(&ctx, &mut rbuf) {
                    Some(frame) => frame,
                    None => break,
                },
            };
            match frame {
                Frame::Request(request, bin) => {
                    let hook = route_for(&ctx, &request);
                    if hook.is_none() && !pipeline.ordered.is_empty() {
                        // Run it once the routed requests before it are done.
                        held = Some((request, bin));
                        paused = true;
                        break;
                    }
                    let flow = dispatch(&ctx, hook, request, bin, &mut wbuf, &mut pipeline);
                    if flow == Flow::Close {
                        if pipeline.ordered.is_empty() {
                            close = true;
                            break;
                        }
                        pipeline.close_after = true;
                    }
                }
                Frame::Reply {
                    bytes,
                    close: closes,
                } => {
                    queue_or_write(&mut pipeline, &mut wbuf, bytes);
                    if closes {
                        if pipeline.ordered.is_empty() {
                            close = true;
                            break;
                        }
                        pipeline.close_after = true;
                    }
                }
                Frame::TooLarge { key, reply } => {
                    refused_too_large(&ctx, &key, true);
                    queue_or_write(&mut pipeline, &mut wbuf, reply);
                }
                Frame::Error(error) => {
                    if let ProtocolError::TooLarge {
                        key,
                        drops_existing,
                        ..
                    } = &error
                    {
                        refused_too_large(&ctx, key, *drops_existing);
                    }
                    let line = error.reply_line().unwrap_or("");
                    let bytes = if line.is_empty() {
                        Bytes::new()
                    } else {
                        Bytes::from(format!("{line}\r\n"))
                    };
                    queue_or_write(&mut pipeline, &mut wbuf, bytes);
                    if error.closes() {
                        if pipeline.ordered.is_empty() {
                            close = true;
                            break;
                        }
                        pipeline.close_after = true;
                    }
                }
            }
            if wbuf.len() >= WRITE_HIGH_WATER && !flush(&mut stream, &mut wbuf, &ctx).await {
                return;
            }
        }
        // Collect routed replies in order, writing what is ready before
        // waiting on the rest.
        while !pipeline.ordered.is_empty() {
            let next = match pipeline.ordered.next().now_or_never() {
                Some(next) => next,
                None => {
                    if !wbuf.is_empty() && !flush(&mut stream, &mut wbuf, &ctx).await {
                        return;
                    }
                    pipeline.ordered.next().await
                }
            };
            if let Some(bytes) = next {
                if wbuf.is_empty() && pipeline.ordered.is_empty() {
                    // The only reply to write: send it as it is, without
                    // copying it into the write buffer first.
                    if !write_reply(&mut stream, &bytes, &ctx).await {
                        return;
                    }
                    continue;
                }
                wbuf.extend_from_slice(&bytes);
                // Many big replies ready at once: write as we go rather
                // than copying all of them first.
                if wbuf.len() >= WRITE_HIGH_WATER && !flush(&mut stream, &mut wbuf, &ctx).await {
                    return;
                }
            }
        }
        if pipeline.close_after {
            close = true;
        }
        if !wbuf.is_empty() && !flush(&mut stream, &mut wbuf, &ctx).await {
            return;
        }
        if close || (closing && held.is_none() && rbuf.is_empty() && !codec.is_mid_request(&rbuf)) {
            let _ = stream.shutdown().await;
            return;
        }
        if rbuf.is_empty() && rbuf.capacity() > SHRINK_ABOVE {
            rbuf = BytesMut::with_capacity(READ_CHUNK);
        }
        // Requests already buffered (decoding paused at the in-flight
        // limit) are handled before reading more.
        if paused {
            continue;
        }
        rbuf.reserve(READ_CHUNK);
        tokio::select! {
            // Reads first, and no random branch order to pay for.
            biased;
            read = stream.read_buf(&mut rbuf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => ctx.stats().bytes_read.add(n as u64),
            },
            _ = shutdown.changed(), if !closing => closing = true,
            // Shutting down with a request half received: give the client
            // a moment to finish it, but a stalled client cannot hold the
            // shutdown.
            // (select! builds every branch's future even when disabled;
            // the async block keeps the timer off the per-read path.)
            _ = async { tokio::time::sleep(CLOSING_READ_GRACE).await }, if closing => {
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// The Lua route for this request on the current configuration, if any.
fn route_for(ctx: &WorkerContext, request: &Request) -> Option<(Rc<WorkerLua>, Route)> {
    let lua = ctx.proxy.as_ref()?.current();
    let hook = lua.hook(request.command())?;
    Some((lua, hook))
}

/// Runs one request: routed ones join the pipeline, local ones answer now.
/// The caller holds a local request back while routed ones are pending.
/// A binary request's reply is encoded back to binary (`bin`).
fn dispatch(
    ctx: &Rc<WorkerContext>,
    route: Option<(Rc<WorkerLua>, Route)>,
    request: Request,
    bin: Option<BinaryContext>,
    wbuf: &mut BytesMut,
    pipeline: &mut Pipeline,
) -> Flow {
    if let Some((lua, hook)) = route {
        let reply = lua.serve(hook, request);
        let future: ReplyFuture = match bin {
            None => reply,
            Some(bin) => Box::pin(reply.map(move |text| {
                let mut out = BytesMut::new();
                bin.encode(&text, &mut out);
                out.freeze()
            })),
        };
        pipeline.ordered.push_back(future);
        return Flow::Continue;
    }
    debug_assert!(pipeline.ordered.is_empty());
    match bin {
        None => ctx.executor.execute(&request, wbuf, ctx.stats()),
        Some(bin) => {
            let mut text = BytesMut::new();
            let flow = ctx.executor.execute(&request, &mut text, ctx.stats());
            bin.encode(&text, wbuf);
            flow
        }
    }
}

/// A store refused as larger than the item size limit: counted, and, as
/// memcached does, the key's old value is dropped when `drops_existing`
/// (in embedded mode; routed keys live elsewhere).
fn refused_too_large(ctx: &WorkerContext, key: &[u8], drops_existing: bool) {
    ctx.stats().store_too_large.incr();
    if drops_existing && !routed(ctx) {
        ctx.executor.drop_stale(key);
    }
}

/// Whether storage commands go through a Lua route (then the embedded
/// cache does not hold the key's value, so there is nothing to drop).
fn routed(ctx: &WorkerContext) -> bool {
    ctx.proxy
        .as_ref()
        .is_some_and(|p| p.current().routes_storage())
}

fn queue_or_write(pipeline: &mut Pipeline, wbuf: &mut BytesMut, bytes: Bytes) {
    if pipeline.ordered.is_empty() {
        wbuf.extend_from_slice(&bytes);
    } else {
        pipeline
            .ordered
            .push_back(Box::pin(std::future::ready(bytes)));
    }
}

async fn flush(stream: &mut TcpStream, wbuf: &mut BytesMut, ctx: &WorkerContext) -> bool {
    let ok = write_reply(stream, wbuf, ctx).await;
    wbuf.clear();
    if wbuf.capacity() > SHRINK_ABOVE {
        *wbuf = BytesMut::with_capacity(READ_CHUNK);
    }
    ok
}

async fn write_reply(stream: &mut TcpStream, bytes: &[u8], ctx: &WorkerContext) -> bool {
    ctx.stats().bytes_written.add(bytes.len() as u64);
    stream.write_all(bytes).await.is_ok()
}
