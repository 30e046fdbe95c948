//! Reloads (SIGHUP, [`ReloadHandle::reload`] or the configuration's own
//! `mcp.schedule_config_reload`): certificates and password files are read
//! again, and the Lua configuration is loaded on the config thread's VM,
//! staged on every worker and committed on all of them, or on none if one
//! fails. The server ([`crate::server`]) owns the threads
//! and calls in here; this module owns the protocol between the main
//! thread and the workers.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};
use tracing::info;

use crate::auth::Auth;
use crate::lua::host::ConfigHost;
use crate::lua::{LoadedConfig, WorkerProxy};
use crate::stats::ProxyStats;
use crate::tls::ServerTls;

/// Asks a running server to reload its Lua configuration (what SIGHUP
/// does).
#[derive(Clone)]
pub struct ReloadHandle(pub(crate) Arc<Notify>);

impl ReloadHandle {
    pub fn reload(&self) {
        self.0.notify_one();
    }
}

/// Messages from the main thread to a worker during a reload.
pub(crate) enum Control {
    /// Build a VM for this configuration and say whether it worked.
    Stage(Arc<LoadedConfig>, oneshot::Sender<Result<(), String>>),
    /// Every worker staged: switch to the staged VM.
    Commit,
    /// Some worker failed: drop the staged VM.
    Abort,
}

/// SIGHUP's part for certificates and password files: each is read again,
/// and one that fails keeps what was loaded before (logged as an error).
/// New connections use what is loaded; established ones keep their session.
pub(crate) fn reload_files(tls: Option<&ServerTls>, auth: Option<&Auth>) {
    if let Some(tls) = tls {
        match tls.reload() {
            Ok(()) => info!("TLS certificates reloaded"),
            Err(e) => tracing::error!("TLS reload failed, keeping the old certificates: {e}"),
        }
    }
    if let Some(auth) = auth {
        match auth.reload() {
            Ok(users) => info!(users, "password file reloaded"),
            Err(e) => tracing::error!("password file reload failed, keeping the old one: {e}"),
        }
    }
}

/// Reloads the Lua configuration on every worker, or on none: the config
/// thread loads it (off the acceptor thread), then every worker builds its
/// new VM beside the old one; only if all succeed do they switch. The
/// config thread hears the outcome, so its crons follow the configuration
/// in use.
pub(crate) async fn reload_config(
    host: Option<Arc<ConfigHost>>,
    controls: Vec<mpsc::UnboundedSender<Control>>,
    proxy_stats: Arc<ProxyStats>,
    config_digest: Arc<crate::metrics::ConfigDigest>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(host) = host else {
        info!("no Lua configuration to reload");
        return;
    };
    // `watch proxyevents` sees the reload as memcached logs it.
    crate::watch::proxy_conf("start");
    let loaded = match host.load().await {
        Ok(loaded) => Arc::new(loaded),
        Err(e) => {
            proxy_stats.reload_failures.fetch_add(1, Relaxed);
            crate::watch::proxy_conf("failed");
            tracing::error!("reload failed, keeping the old configuration: {e}");
            return;
        }
    };
    // One read of the startfile for its digest and its MD5 (admin keys).
    let startfile = crate::lua::vm::read_startfiles(&loaded.proxy);
    let digest = crate::metrics::startfile_digest(startfile.as_deref(), &loaded.backend_lists());
    let mut replies = Vec::with_capacity(controls.len());
    for control in &controls {
        let (tx, rx) = oneshot::channel();
        if control.send(Control::Stage(loaded.clone(), tx)).is_ok() {
            replies.push(rx);
        }
    }
    let mut failure = None;
    for rx in replies {
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert("a worker stopped during the reload".to_string());
            }
        }
    }
    if let Some(e) = failure {
        for control in &controls {
            let _ = control.send(Control::Abort);
        }
        host.settle(false);
        proxy_stats.reload_failures.fetch_add(1, Relaxed);
        crate::watch::proxy_conf("failed");
        tracing::error!("reload failed, keeping the old configuration: {e}");
        return;
    }
    for control in &controls {
        let _ = control.send(Control::Commit);
    }
    host.settle(true);
    proxy_stats.set_names(&loaded.stat_names);
    proxy_stats.reloads.fetch_add(1, Relaxed);
    proxy_stats.set_config_file(&loaded.proxy.startfile, startfile.as_deref());
    config_digest.set(digest);
    crate::watch::proxy_conf("done");
    info!("configuration reloaded on every worker");
}

/// A worker's part of a reload.
pub(crate) fn handle_control(proxy: Option<&WorkerProxy>, message: Control) {
    match (proxy, message) {
        (Some(proxy), Control::Stage(loaded, reply)) => {
            let _ = reply.send(proxy.stage(&loaded).map_err(|e| e.to_string()));
        }
        (None, Control::Stage(_, reply)) => {
            let _ = reply.send(Err("this worker has no Lua configuration".into()));
        }
        (Some(proxy), Control::Commit) => proxy.commit(),
        (Some(proxy), Control::Abort) => proxy.abort(),
        (None, _) => {}
    }
}
