//! One client connection: read, decode, execute, reply, in order.
//!
//! The loop is "decode every complete request in the buffer, execute each,
//! append replies to one write buffer, write it once, then read more", so a
//! pipelined batch costs one `write` however many requests it holds, and
//! replies always leave in request order.

use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use memroute_proto::{reply, Decoded, RequestDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::embedded::{Embedded, Flow};
use crate::stats::{ServerStats, WorkerStats};
use memroute_proto::Limits;

/// Bytes reserved per read.
const READ_CHUNK: usize = 16 * 1024;
/// Replies are flushed mid-batch past this size, so a huge pipeline of gets
/// cannot grow the write buffer without bound.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Buffers that grew past this (a large value) are released once idle.
const SHRINK_ABOVE: usize = 256 * 1024;

/// What a worker shares with all of its connections.
pub struct WorkerContext {
    pub executor: Embedded,
    pub server_stats: Arc<ServerStats>,
    pub worker: usize,
    pub limits: Limits,
}

impl WorkerContext {
    /// This worker's counters.
    pub fn stats(&self) -> &WorkerStats {
        self.server_stats.worker(self.worker)
    }
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
    let mut decoder = RequestDecoder::new(ctx.limits.clone());
    let mut closing = *shutdown.borrow();
    loop {
        let mut close = false;
        while let Some(decoded) = decoder.decode(&mut rbuf) {
            match decoded {
                Decoded::Request(request) => {
                    if ctx.executor.execute(&request, &mut wbuf, ctx.stats()) == Flow::Close {
                        close = true;
                        break;
                    }
                }
                Decoded::Error(error) => {
                    if let Some(line) = error.reply_line() {
                        reply::line(&mut wbuf, line);
                    }
                    if error.closes() {
                        close = true;
                        break;
                    }
                }
            }
            if wbuf.len() >= WRITE_HIGH_WATER && !flush(&mut stream, &mut wbuf, &ctx).await {
                return;
            }
        }
        if !wbuf.is_empty() && !flush(&mut stream, &mut wbuf, &ctx).await {
            return;
        }
        if close || (closing && rbuf.is_empty() && !decoder.is_mid_request()) {
            let _ = stream.shutdown().await;
            return;
        }
        if rbuf.is_empty() && rbuf.capacity() > SHRINK_ABOVE {
            rbuf = BytesMut::with_capacity(READ_CHUNK);
        }
        rbuf.reserve(READ_CHUNK);
        tokio::select! {
            read = stream.read_buf(&mut rbuf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => ctx.stats().bytes_read.add(n as u64),
            },
            _ = shutdown.changed(), if !closing => closing = true,
        }
    }
}

async fn flush(stream: &mut TcpStream, wbuf: &mut BytesMut, ctx: &WorkerContext) -> bool {
    let ok = stream.write_all(wbuf).await.is_ok();
    ctx.stats().bytes_written.add(wbuf.len() as u64);
    wbuf.clear();
    if wbuf.capacity() > SHRINK_ABOVE {
        *wbuf = BytesMut::with_capacity(READ_CHUNK);
    }
    ok
}
