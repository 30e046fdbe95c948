//! Threads, listeners and the shutdown sequence.
//!
//! memcached's model: one acceptor hands each new connection to one worker
//! thread, round robin, and that worker owns the connection for its whole
//! life. Each worker is a single-threaded tokio runtime with a `LocalSet`,
//! so per-connection state (and, later, the worker's Lua VM and backend
//! connections) never crosses threads and needs no locks.
//!
//! Shutdown (SIGTERM, SIGINT, or [`ShutdownHandle::shutdown`]): the acceptor
//! stops, every connection finishes the request it is in and closes, and
//! [`Server::run`] returns once all are closed or `shutdown_timeout` passes.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use memroute_cache::{Cache, CacheConfig};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::LocalSet;
use tracing::{debug, info, warn};

use crate::admin::Admin;
use crate::config::ServerConfig;
use crate::connection::{serve, WorkerContext};
use crate::embedded::Embedded;
use crate::stats::ServerStats;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot start worker thread: {0}")]
    Thread(io::Error),
    #[error("cannot start async runtime: {0}")]
    Runtime(io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Triggers a graceful shutdown from another thread (tests, embedders).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

/// A bound, not yet running server.
pub struct Server {
    config: ServerConfig,
    listeners: Vec<std::net::TcpListener>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl Server {
    /// Binds every listen address (so callers can learn ports chosen by the
    /// OS for port 0) without starting any thread.
    pub fn bind(mut config: ServerConfig) -> Result<Server, RuntimeError> {
        if config.threads == 0 {
            return Err(RuntimeError::Config("threads must be at least 1".into()));
        }
        if config.listen.is_empty() {
            return Err(RuntimeError::Config("no listen address".into()));
        }
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let listener = bind_listener(*addr, config.backlog)
                .map_err(|source| RuntimeError::Bind { addr: *addr, source })?;
            listeners.push(listener);
        }
        // Report real ports (port 0 becomes the chosen one).
        config.listen = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let (tx, _) = watch::channel(false);
        Ok(Server {
            config,
            listeners,
            shutdown: Arc::new(tx),
        })
    }

    /// The addresses actually bound.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.config.listen
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Runs until shutdown. With `handle_signals`, SIGTERM and SIGINT start
    /// a graceful shutdown.
    pub fn run(self, handle_signals: bool) -> Result<(), RuntimeError> {
        let Server {
            config,
            listeners,
            shutdown,
        } = self;
        let cache = Arc::new(Cache::new(CacheConfig {
            max_item_size: config.limits.max_item_size,
            ..CacheConfig::with_memory_limit(config.memory_limit)
        }));
        let stats = Arc::new(ServerStats::new(config.threads));
        let admin = Arc::new(Admin {
            stats: stats.clone(),
            config: config.clone(),
        });

        let mut senders = Vec::with_capacity(config.threads);
        let mut workers = Vec::with_capacity(config.threads);
        for worker in 0..config.threads {
            let (tx, rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
            senders.push(tx);
            let ctx = WorkerSeed {
                cache: cache.clone(),
                admin: admin.clone(),
                stats: stats.clone(),
                worker,
                config: config.clone(),
                shutdown: shutdown.subscribe(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("memroute-worker-{worker}"))
                .spawn(move || ctx.run(rx))
                .map_err(RuntimeError::Thread)?;
            workers.push(thread);
        }

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RuntimeError::Runtime)?;
        let local = LocalSet::new();
        local.block_on(&runtime, async {
            for listener in listeners {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(RuntimeError::Runtime)?;
                tokio::task::spawn_local(accept_loop(
                    listener,
                    senders.clone(),
                    stats.clone(),
                    config.max_connections,
                    shutdown.subscribe(),
                ));
            }
            drop(senders);
            info!(addrs = ?config.listen, threads = config.threads, "memroute listening");
            wait_for_shutdown(&shutdown, handle_signals).await;
            info!("shutting down: no new connections, finishing requests in flight");
            Ok::<(), RuntimeError>(())
        })?;
        // Dropping the acceptor tasks drops the last senders, so idle
        // workers see their channel close.
        drop(local);
        for thread in workers {
            let _ = thread.join();
        }
        info!("shutdown complete");
        Ok(())
    }
}

fn bind_listener(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

async fn wait_for_shutdown(shutdown: &watch::Sender<bool>, handle_signals: bool) {
    let mut rx = shutdown.subscribe();
    if !handle_signals {
        let _ = rx.wait_for(|&stop| stop).await;
        return;
    }
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        let _ = rx.wait_for(|&stop| stop).await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
        _ = rx.wait_for(|&stop| stop) => {}
    }
    let _ = shutdown.send(true);
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    workers: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    stats: Arc<ServerStats>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|&stop| stop) => return,
        };
        let (mut stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if stats.curr_connections.load(Relaxed) >= max_connections {
            stats.rejected_connections.fetch_add(1, Relaxed);
            debug!(%peer, "connection refused: limit reached");
            // memcached's words for a refused connection.
            let _ = stream
                .write_all(b"ERROR Too many open connections\r\n")
                .await;
            continue;
        }
        stats.curr_connections.fetch_add(1, Relaxed);
        stats.total_connections.fetch_add(1, Relaxed);
        let Ok(std_stream) = stream.into_std() else {
            stats.curr_connections.fetch_sub(1, Relaxed);
            continue;
        };
        if workers[next % workers.len()].send(std_stream).is_err() {
            stats.curr_connections.fetch_sub(1, Relaxed);
        }
        next = next.wrapping_add(1);
    }
}

/// What a worker thread starts from.
struct WorkerSeed {
    cache: Arc<Cache>,
    admin: Arc<Admin>,
    stats: Arc<ServerStats>,
    worker: usize,
    config: ServerConfig,
    shutdown: watch::Receiver<bool>,
}

impl WorkerSeed {
    fn run(self, mut incoming: mpsc::UnboundedReceiver<std::net::TcpStream>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, worker = self.worker, "worker runtime failed to start");
                return;
            }
        };
        let ctx = Rc::new(WorkerContext {
            executor: Embedded::new(self.cache, self.admin),
            server_stats: self.stats.clone(),
            worker: self.worker,
            limits: self.config.limits.clone(),
        });
        let local = LocalSet::new();
        let stats = self.stats;
        let mut shutdown = self.shutdown;
        let timeout = self.config.shutdown_timeout;
        local.block_on(&runtime, async move {
            let live = Rc::new(std::cell::Cell::new(0usize));
            loop {
                let stream = tokio::select! {
                    stream = incoming.recv() => stream,
                    _ = shutdown.wait_for(|&stop| stop) => None,
                };
                let Some(stream) = stream else { break };
                let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                    stats.curr_connections.fetch_sub(1, Relaxed);
                    continue;
                };
                let (ctx, live, stats, rx) =
                    (ctx.clone(), live.clone(), stats.clone(), shutdown.clone());
                live.set(live.get() + 1);
                tokio::task::spawn_local(async move {
                    serve(stream, ctx, rx).await;
                    live.set(live.get() - 1);
                    stats.curr_connections.fetch_sub(1, Relaxed);
                });
            }
            // Let connections finish their request in flight.
            let deadline = tokio::time::Instant::now() + timeout;
            while live.get() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if live.get() > 0 {
                warn!(
                    connections = live.get(),
                    "shutdown timeout: closing connections still mid-request"
                );
            }
        });
    }
}
