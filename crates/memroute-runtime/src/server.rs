//! Threads, listeners and the shutdown sequence.
//!
//! memcached's model: one acceptor hands each new connection to one worker
//! thread, round robin, and that worker owns the connection for its whole
//! life. Each worker is a single-threaded tokio runtime with a `LocalSet`,
//! so per-connection state (and, later, the worker's Lua VM and backend
//! connections) never crosses threads and needs no locks.
//!
//! Listeners are TCP addresses (`-l`, `-p`), tagged or not, or one UNIX
//! socket (`-s`). A connection carries its listener's tag
//! ([`ListenerTag`]) to its worker, which picks the route table for it once.
//!
//! Shutdown (SIGTERM, SIGINT, or [`ShutdownHandle::shutdown`]): the acceptor
//! stops, every connection finishes the request it is in and closes, and
//! [`Server::run`] returns once all are closed or `shutdown_timeout` passes.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use memroute_cache::{Cache, CacheConfig};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::LocalSet;
use tracing::{debug, error, info, warn};

use crate::admin::Admin;
use crate::auth::Auth;
use crate::config::{ServerConfig, TaggedListen, UnixSocket};
use crate::connection::{serve, with_client_fd, CloseReason, WorkerContext};
use crate::embedded::Embedded;
use crate::lua::host::ConfigHost;
use crate::lua::{LoadedConfig, WorkerProxy};
pub use crate::reload::ReloadHandle;
use crate::reload::{handle_control, reload_config, reload_files, Control};
use crate::route::{check_tag, ListenerTag, RouteEnv};
use crate::stats::ProxyStats;
use crate::stats::ServerStats;
use crate::tls::ServerTls;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot listen on UNIX socket {}: {source}", path.display())]
    BindUnix { path: PathBuf, source: io::Error },
    #[error("cannot start worker thread: {0}")]
    Thread(io::Error),
    #[error("cannot start async runtime: {0}")]
    Runtime(io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Lua(#[from] crate::lua::ConfigError),
    /// A TLS certificate, key or CA file that cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// An auth file (`-Y`) or SASL password file (`-S`) that cannot be used.
    #[error("authentication: {0}")]
    Auth(String),
    /// Worker threads that had not stopped [`WORKER_STOP_GRACE`] after the
    /// shutdown timeout (a Lua route that never returns holds its worker:
    /// Lua cannot be interrupted); the process ended without them, after
    /// the write-behind queues were drained.
    #[error(
        "{0} worker thread(s) did not stop within the shutdown timeout (a Lua route that never \
         returns?): their connections were dropped"
    )]
    StuckWorkers(usize),
}

/// How long after `shutdown_timeout` the server still waits for a worker
/// thread to stop (its connections are closed at the timeout) before it
/// ends without it.
const WORKER_STOP_GRACE: Duration = Duration::from_secs(5);

/// Joins `workers`, waiting at most `limit` in all; returns how many had
/// not stopped by then (left running: they end with the process).
fn join_workers(workers: Vec<std::thread::JoinHandle<()>>, limit: Duration) -> usize {
    let deadline = std::time::Instant::now() + limit;
    let mut running = workers;
    while !running.is_empty() && std::time::Instant::now() < deadline {
        let (done, rest): (Vec<_>, Vec<_>) = running.into_iter().partition(|w| w.is_finished());
        for worker in done {
            let _ = worker.join();
        }
        running = rest;
        if !running.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    running.len()
}

/// Triggers a graceful shutdown from another thread (tests, embedders).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

/// A bound listening socket, not yet accepting.
enum BoundListener {
    Tcp(std::net::TcpListener, ListenerTag),
    Unix(std::os::unix::net::UnixListener),
}

/// A listener accepting on the acceptor thread.
enum Acceptor {
    Tcp(tokio::net::TcpListener, ListenerTag),
    Unix(tokio::net::UnixListener),
}

/// An accepted connection on its way to a worker.
enum Accepted {
    /// With the client's address (for `watch connevents`).
    Tcp(std::net::TcpStream, ListenerTag, std::net::SocketAddr),
    Unix(std::os::unix::net::UnixStream),
}

/// A bound, not yet running server.
pub struct Server {
    config: ServerConfig,
    listeners: Vec<BoundListener>,
    /// The distinct tags of the tagged listeners; a tagged listener's
    /// [`ListenerTag`] is its tag's place here.
    listener_tags: Arc<[String]>,
    shutdown: Arc<watch::Sender<bool>>,
    reload: Arc<Notify>,
    /// Client-facing TLS (`-Z`), reloaded on SIGHUP.
    tls: Option<Arc<ServerTls>>,
    /// Client authentication (`-Y`, `-S`), its file reloaded on SIGHUP.
    auth: Option<Arc<Auth>>,
}

impl Server {
    /// Binds every listen address (so callers can learn ports chosen by the
    /// OS for port 0) without starting any thread.
    pub fn bind(mut config: ServerConfig) -> Result<Server, RuntimeError> {
        if config.threads == 0 {
            return Err(RuntimeError::Config("threads must be at least 1".into()));
        }
        if config.listen.is_empty()
            && config.tagged_listen.is_empty()
            && config.unix_socket.is_none()
        {
            return Err(RuntimeError::Config("no listen address".into()));
        }
        let mut listener_tags: Vec<String> = Vec::new();
        for tagged in &config.tagged_listen {
            check_tag(tagged.tag.as_bytes())
                .map_err(|e| RuntimeError::Config(format!("listener {}: {e}", tagged.addr)))?;
            if !listener_tags.contains(&tagged.tag) {
                listener_tags.push(tagged.tag.clone());
            }
        }
        // Certificates and password files are read before anything
        // listens: a file that cannot be used stops the start.
        let tls = match &config.tls {
            Some(settings) => Some(Arc::new(
                ServerTls::new(settings.clone()).map_err(RuntimeError::Tls)?,
            )),
            None => None,
        };
        let auth = match &config.auth {
            Some(settings) => Some(Arc::new(
                Auth::new(settings.clone()).map_err(RuntimeError::Auth)?,
            )),
            None => None,
        };
        let mut listeners = Vec::new();
        let bind_tcp = |addr: &mut SocketAddr| {
            let listener =
                bind_listener(*addr, config.backlog).map_err(|source| RuntimeError::Bind {
                    addr: *addr,
                    source,
                })?;
            // Report real ports (port 0 becomes the chosen one).
            if let Ok(bound) = listener.local_addr() {
                *addr = bound;
            }
            Ok::<_, RuntimeError>(listener)
        };
        let mut listen = config.listen.clone();
        for addr in &mut listen {
            listeners.push(BoundListener::Tcp(bind_tcp(addr)?, ListenerTag::UNTAGGED));
        }
        let mut tagged_listen = config.tagged_listen.clone();
        for TaggedListen { tag, addr } in &mut tagged_listen {
            let index = listener_tags.iter().position(|t| t == tag).unwrap_or(0);
            listeners.push(BoundListener::Tcp(
                bind_tcp(addr)?,
                ListenerTag::tagged(index),
            ));
        }
        if let Some(unix) = &config.unix_socket {
            let listener =
                bind_unix(unix, config.backlog).map_err(|source| RuntimeError::BindUnix {
                    path: unix.path.clone(),
                    source,
                })?;
            listeners.push(BoundListener::Unix(listener));
        }
        config.listen = listen;
        config.tagged_listen = tagged_listen;
        let (tx, _) = watch::channel(false);
        Ok(Server {
            config,
            listeners,
            listener_tags: listener_tags.into(),
            shutdown: Arc::new(tx),
            reload: Arc::new(Notify::new()),
            tls,
            auth,
        })
    }

    /// The untagged addresses actually bound.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.config.listen
    }

    /// The tagged listeners, with the addresses actually bound.
    pub fn tagged_addrs(&self) -> &[TaggedListen] {
        &self.config.tagged_listen
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle(self.reload.clone())
    }

    /// Runs until shutdown. With `handle_signals`, SIGTERM and SIGINT start
    /// a graceful shutdown.
    pub fn run(self, handle_signals: bool) -> Result<(), RuntimeError> {
        let Server {
            config,
            listeners,
            listener_tags,
            shutdown,
            reload,
            tls,
            auth,
        } = self;
        let proxy_stats = Arc::new(ProxyStats::default());
        // `stats` config_digest and the metrics endpoint's info label: the
        // startfile and the backend lists it resolves to, set once loaded.
        let config_digest = Arc::new(crate::metrics::ConfigDigest::new(
            crate::metrics::config_digest(None, &[]),
        ));
        let cache = Arc::new(Cache::new(CacheConfig {
            max_item_size: config.limits.max_item_size,
            ..CacheConfig::with_memory_limit(config.memory_limit)
        }));
        let stats = Arc::new(ServerStats::new(
            config.threads,
            crate::route::route_slot_count(listener_tags.len()),
        ));
        // Made before the first load: mcp.server_stats reads them.
        let admin = Arc::new(Admin {
            stats: stats.clone(),
            config: config.clone(),
            proxy_stats: proxy_stats.clone(),
            tls: tls.clone(),
            auth: auth.clone(),
            digest: config_digest.clone(),
        });
        // The config thread keeps the config VM (and runs its crons); it
        // loads once here, before any worker starts: a broken startfile
        // stops the server with the file and line at fault.
        let host = match &config.proxy {
            Some(proxy) => Some(Arc::new(
                ConfigHost::start(
                    proxy.clone(),
                    proxy_stats.stores.clone(),
                    proxy_stats.clone(),
                    reload.clone(),
                    crate::lua::server_stats::StatsSource {
                        admin: admin.clone(),
                        cache: cache.clone(),
                    },
                )
                .map_err(RuntimeError::Thread)?,
            )),
            None => None,
        };
        let loaded = match (&config.proxy, &host) {
            (Some(proxy), Some(host)) => {
                let loaded = host.load_blocking()?;
                host.settle(true);
                proxy_stats.set_names(&loaded.stat_names);
                // One read of the startfile for its digest and its MD5.
                let startfile = crate::lua::vm::read_startfiles(proxy);
                proxy_stats.set_config_file(&proxy.startfile, startfile.as_deref());
                config_digest.set(crate::metrics::startfile_digest(
                    startfile.as_deref(),
                    &loaded.backend_lists(),
                ));
                Some(Arc::new(loaded))
            }
            _ => None,
        };
        // Metrics endpoint (--metrics-listen): a thread of its own that
        // reads what `stats` reads; off by default.
        let metrics = match config.metrics_listen {
            Some(addr) => {
                let sources = crate::metrics::Sources {
                    admin: admin.clone(),
                    cache: cache.clone(),
                    digest: config_digest.clone(),
                    listener_tags: listener_tags.clone(),
                };
                Some(
                    crate::metrics::MetricsServer::start(addr, sources, shutdown.subscribe())
                        .map_err(|source| RuntimeError::Bind { addr, source })?,
                )
            }
            None => None,
        };

        let mut senders = Vec::with_capacity(config.threads);
        let mut controls = Vec::with_capacity(config.threads);
        let mut workers = Vec::with_capacity(config.threads);
        let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        for worker in 0..config.threads {
            let (tx, rx) = mpsc::unbounded_channel::<Accepted>();
            let (control_tx, control_rx) = mpsc::unbounded_channel::<Control>();
            senders.push(tx);
            controls.push(control_tx);
            let ctx = WorkerSeed {
                cache: cache.clone(),
                admin: admin.clone(),
                stats: stats.clone(),
                proxy_stats: proxy_stats.clone(),
                loaded: loaded.clone(),
                worker,
                config: config.clone(),
                shutdown: shutdown.subscribe(),
                started: started_tx.clone(),
                tls: tls.clone(),
                auth: auth.clone(),
                listener_tags: listener_tags.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("memroute-worker-{worker}"))
                .spawn(move || ctx.run(rx, control_rx))
                .map_err(RuntimeError::Thread)?;
            workers.push(thread);
        }
        drop(started_tx);
        // Every worker must build its VM before the server listens.
        let mut startup_error = None;
        for _ in 0..config.threads {
            match started_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    startup_error.get_or_insert(e);
                }
                Err(_) => {
                    startup_error.get_or_insert("a worker thread died while starting".into());
                }
            }
        }
        if let Some(error) = startup_error {
            let _ = shutdown.send(true);
            drop(senders);
            for thread in workers {
                let _ = thread.join();
            }
            return Err(RuntimeError::Config(error));
        }

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RuntimeError::Runtime)?;
        let local = LocalSet::new();
        local.block_on(&runtime, async {
            for listener in listeners {
                let listener = match listener {
                    BoundListener::Tcp(l, tag) => Acceptor::Tcp(
                        tokio::net::TcpListener::from_std(l).map_err(RuntimeError::Runtime)?,
                        tag,
                    ),
                    BoundListener::Unix(l) => Acceptor::Unix(
                        tokio::net::UnixListener::from_std(l).map_err(RuntimeError::Runtime)?,
                    ),
                };
                tokio::task::spawn_local(accept_loop(
                    listener,
                    senders.clone(),
                    stats.clone(),
                    config.max_connections,
                    shutdown.subscribe(),
                ));
            }
            drop(senders);
            info!(
                addrs = ?config.listen,
                tagged = ?config.tagged_listen,
                unix = ?config.unix_socket.as_ref().map(|u| &u.path),
                threads = config.threads,
                "memroute listening"
            );
            wait_for_shutdown(&shutdown, handle_signals, &reload, |()| {
                reload_files(tls.as_deref(), auth.as_deref());
                reload_config(
                    host.clone(),
                    controls.clone(),
                    proxy_stats.clone(),
                    config_digest.clone(),
                )
            })
            .await;
            info!("shutting down: no new connections, finishing requests in flight");
            Ok::<(), RuntimeError>(())
        })?;
        // Dropping the acceptor tasks drops the last senders, so idle
        // workers see their channel close.
        drop(local);
        let stuck = join_workers(workers, config.shutdown_timeout + WORKER_STOP_GRACE);
        if stuck > 0 {
            error!(
                workers = stuck,
                "worker threads did not stop within the shutdown timeout; ending without them"
            );
        }
        if let Some(metrics) = metrics {
            metrics.join();
        }
        // Every connection is closed: nothing can queue more writes, so the
        // write-behind queues can be emptied for good. The drain is a
        // statement of its own: in a log macro's arguments it would only
        // run when info logging is on.
        for store in proxy_stats.stores.all() {
            let report = store.drain(config.drain_timeout);
            info!("{}: {}", store.name(), report);
        }
        if stuck > 0 {
            return Err(RuntimeError::StuckWorkers(stuck));
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

/// Binds a UNIX socket as memcached does: a socket file left by an earlier
/// run is replaced (any other file at `path` is an error), and the file's
/// mode is `-a`. The mode is set before `listen`, so no client can connect
/// while the file still has the umask's permissions.
fn bind_unix(unix: &UnixSocket, backlog: u32) -> io::Result<std::os::unix::net::UnixListener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(&unix.path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        std::fs::remove_file(&unix.path)?;
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(&unix.path)?)?;
    std::fs::set_permissions(&unix.path, std::fs::Permissions::from_mode(unix.mode))?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(std::os::unix::net::UnixListener::from(
        std::os::fd::OwnedFd::from(socket),
    ))
}

/// Waits for a shutdown request (signal or handle), running reloads (SIGHUP
/// or handle) in the meantime.
async fn wait_for_shutdown<F, Fut>(
    shutdown: &watch::Sender<bool>,
    handle_signals: bool,
    reload: &Notify,
    mut do_reload: F,
) where
    F: FnMut(()) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let mut rx = shutdown.subscribe();
    let install = |kind| {
        if handle_signals {
            signal(kind).ok()
        } else {
            None
        }
    };
    let mut term = install(SignalKind::terminate());
    let mut int = install(SignalKind::interrupt());
    let mut hup = install(SignalKind::hangup());
    if handle_signals && (term.is_none() || int.is_none()) {
        warn!("cannot install signal handlers; stop with SIGKILL");
    }
    async fn next(signal: &mut Option<Signal>) {
        match signal {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    loop {
        tokio::select! {
            _ = next(&mut term) => { info!("SIGTERM received"); break; }
            _ = next(&mut int) => { info!("SIGINT received"); break; }
            _ = rx.wait_for(|&stop| stop) => break,
            _ = next(&mut hup) => { info!("SIGHUP received: reloading"); do_reload(()).await; }
            _ = reload.notified() => { info!("reload requested"); do_reload(()).await; }
        }
    }
    let _ = shutdown.send(true);
}

/// A connection just accepted, still on the acceptor thread.
enum Incoming {
    Tcp(tokio::net::TcpStream, ListenerTag, std::net::SocketAddr),
    Unix(tokio::net::UnixStream),
}

impl Acceptor {
    async fn accept(&self) -> io::Result<Incoming> {
        match self {
            Acceptor::Tcp(listener, tag) => {
                let (stream, peer) = listener.accept().await?;
                debug!(%peer, "connection accepted");
                Ok(Incoming::Tcp(stream, *tag, peer))
            }
            Acceptor::Unix(listener) => Ok(Incoming::Unix(listener.accept().await?.0)),
        }
    }
}

impl Incoming {
    /// Tells the client the connection limit is reached, in memcached's
    /// words, and closes.
    async fn refuse(self) {
        const REFUSAL: &[u8] = b"ERROR Too many open connections\r\n";
        let _ = match self {
            Incoming::Tcp(mut stream, _, _) => stream.write_all(REFUSAL).await,
            Incoming::Unix(mut stream) => stream.write_all(REFUSAL).await,
        };
    }

    /// The connection as it crosses to its worker's runtime.
    fn into_std(self) -> io::Result<Accepted> {
        Ok(match self {
            Incoming::Tcp(stream, tag, peer) => Accepted::Tcp(stream.into_std()?, tag, peer),
            Incoming::Unix(stream) => Accepted::Unix(stream.into_std()?),
        })
    }
}

async fn accept_loop(
    listener: Acceptor,
    workers: Vec<mpsc::UnboundedSender<Accepted>>,
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
        let incoming = match accepted {
            Ok(incoming) => incoming,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if stats.curr_connections.load(Relaxed) >= max_connections {
            stats.rejected_connections.fetch_add(1, Relaxed);
            debug!("connection refused: limit reached");
            incoming.refuse().await;
            continue;
        }
        stats.curr_connections.fetch_add(1, Relaxed);
        stats.total_connections.fetch_add(1, Relaxed);
        let Ok(std_stream) = incoming.into_std() else {
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
    proxy_stats: Arc<ProxyStats>,
    loaded: Option<Arc<LoadedConfig>>,
    worker: usize,
    config: ServerConfig,
    shutdown: watch::Receiver<bool>,
    started: std::sync::mpsc::Sender<Result<(), String>>,
    tls: Option<Arc<ServerTls>>,
    auth: Option<Arc<Auth>>,
    listener_tags: Arc<[String]>,
}

impl WorkerSeed {
    fn run(
        self,
        mut incoming: mpsc::UnboundedReceiver<Accepted>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = self.started.send(Err(format!("worker runtime: {e}")));
                return;
            }
        };
        let local = LocalSet::new();
        let executor = Embedded::new(self.cache, self.admin);
        // Backend connections spawn local tasks, so the VM is built inside
        // the worker's LocalSet.
        let proxy = match &self.loaded {
            Some(loaded) => {
                let env = RouteEnv {
                    embedded: executor.clone(),
                    server_stats: self.stats.clone(),
                    worker: self.worker,
                    limits: self.config.limits.clone(),
                    proxy_stats: self.proxy_stats.clone(),
                    listener_tags: self.listener_tags.clone(),
                    pool_stats: Default::default(),
                };
                match local.block_on(&runtime, async { WorkerProxy::new(env, loaded) }) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        let _ = self.started.send(Err(e.to_string()));
                        return;
                    }
                }
            }
            None => None,
        };
        let _ = self.started.send(Ok(()));
        let ctx = Rc::new(WorkerContext {
            executor,
            server_stats: self.stats.clone(),
            worker: self.worker,
            limits: self.config.limits.clone(),
            protocol: self.config.protocol,
            routes: proxy.as_ref().map(|p| p.routes().clone()),
            idle_timeout: self.config.idle_timeout,
            client_buffer_limit: self.config.client_buffer_limit,
            auth: self.auth.clone(),
        });
        let stats = self.stats;
        let mut shutdown = self.shutdown;
        let timeout = self.config.shutdown_timeout;
        let server_tls = self.tls;
        local.block_on(&runtime, async move {
            let live = Rc::new(std::cell::Cell::new(0usize));
            loop {
                let stream = tokio::select! {
                    stream = incoming.recv() => stream,
                    Some(message) = control.recv() => {
                        handle_control(proxy.as_ref(), message);
                        continue;
                    }
                    _ = shutdown.wait_for(|&stop| stop) => None,
                };
                let Some(stream) = stream else { break };
                let (ctx, live, stats, rx) =
                    (ctx.clone(), live.clone(), stats.clone(), shutdown.clone());
                let tls = server_tls.clone();
                live.set(live.get() + 1);
                tokio::task::spawn_local(async move {
                    match stream {
                        Accepted::Tcp(stream, tag, peer) => {
                            let peer = Some(peer);
                            let fd = stream.as_raw_fd();
                            if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                                let _ = stream.set_nodelay(true);
                                crate::watch::conn_new(peer, fd);
                                let served = async move {
                                    match tls {
                                        None => serve(stream, ctx, tag, rx).await,
                                        Some(tls) => serve_tls(stream, &tls, ctx, tag, rx).await,
                                    }
                                };
                                let reason = with_client_fd(fd, served).await;
                                crate::watch::conn_close(peer, fd, reason.name());
                            }
                        }
                        // A UNIX socket is local: memcached serves it
                        // without TLS even under -Z.
                        Accepted::Unix(stream) => {
                            let fd = stream.as_raw_fd();
                            if let Ok(stream) = tokio::net::UnixStream::from_std(stream) {
                                crate::watch::conn_new(None, fd);
                                let served = serve(stream, ctx, ListenerTag::UNTAGGED, rx);
                                let reason = with_client_fd(fd, served).await;
                                crate::watch::conn_close(None, fd, reason.name());
                            }
                        }
                    }
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

/// How long a client has to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS connection: the handshake (with the certificates current now),
/// then the same loop as plain TCP over the session. The client
/// certificate's common name is available to its routes
/// (`r:tls_peer_cn()`).
async fn serve_tls(
    stream: tokio::net::TcpStream,
    tls: &ServerTls,
    ctx: Rc<WorkerContext>,
    tag: ListenerTag,
    mut shutdown: watch::Receiver<bool>,
) -> CloseReason {
    let peer = stream.peer_addr().ok();
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tls.handshake_failed();
                debug!(?peer, error = %e, "TLS handshake failed");
                return CloseReason::Error;
            }
            Err(_) => {
                tls.handshake_failed();
                debug!(?peer, "TLS handshake timed out");
                return CloseReason::Error;
            }
        },
        _ = shutdown.wait_for(|&stop| stop) => return CloseReason::Shutdown,
    };
    let cn = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| crate::tls::peer_common_name(cert))
        .map(Rc::<[u8]>::from);
    crate::tls::PEER_CN
        .scope(cn, serve(stream, ctx, tag, shutdown))
        .await
}
