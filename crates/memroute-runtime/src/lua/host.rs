//! The config thread: it owns the config VM for the server's life, loads
//! the configuration in it (at start and at every reload), and runs its
//! crons in between (`super::cron`), as memcached's configuration thread
//! does.
//!
//! Keeping one VM means the startfile's globals outlive a reload: a cron
//! can fetch something, keep it in a global and call
//! `mcp.schedule_config_reload()`, and the next `mcp_config_pools` reads
//! it. A reload the cron asks for goes through the server's reload path
//! (the same as SIGHUP: load here, stage on every worker, commit or
//! abort), which tells this thread the outcome so the crons follow the
//! configuration in use.
//!
//! The VM never leaves this thread (mlua's `Lua` is not `Send`); the
//! server talks to it through a channel. A cron that never returns holds
//! up the thread, and with it reloads, as it would in memcached.

use std::rc::Rc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

use mlua::Lua;
use tokio::sync::{oneshot, Notify};

use super::config::{is_mcrouter, load_into, ConfigError, LoadedConfig, ProxyConfig};
use super::cron::{Crons, ReloadRequest};
use super::server_stats::StatsSource;
use super::vm;
use crate::stats::ProxyStats;
use crate::store::StoreRegistry;

enum Request {
    /// Load the configuration and answer it.
    Load(oneshot::Sender<Result<LoadedConfig, ConfigError>>),
    /// The last load's configuration is in use (`true`) or was dropped.
    Settle(bool),
}

/// The server's handle on the config thread. Dropping it lets the thread
/// end (at once if it is idle).
pub struct ConfigHost {
    requests: mpsc::Sender<Request>,
}

impl ConfigHost {
    /// Starts the config thread. `reload` is what SIGHUP notifies: a
    /// reload the configuration asks for is requested through it.
    /// `server_stats` is what `mcp.server_stats` reads.
    pub fn start(
        proxy: ProxyConfig,
        stores: Arc<StoreRegistry>,
        stats: Arc<ProxyStats>,
        reload: Arc<Notify>,
        server_stats: StatsSource,
    ) -> std::io::Result<ConfigHost> {
        let (requests, inbox) = mpsc::channel();
        std::thread::Builder::new()
            .name("memroute-config".into())
            .spawn(move || {
                let mut thread = ConfigThread {
                    proxy,
                    stores,
                    stats,
                    reload,
                    server_stats,
                    vm: None,
                };
                thread.run(inbox);
            })?;
        Ok(ConfigHost { requests })
    }

    fn ask(&self) -> oneshot::Receiver<Result<LoadedConfig, ConfigError>> {
        let (reply, answer) = oneshot::channel();
        // A send fails only if the thread is gone; the dropped reply then
        // reads as that below.
        let _ = self.requests.send(Request::Load(reply));
        answer
    }

    fn gone() -> ConfigError {
        ConfigError::Invalid("the config thread stopped".into())
    }

    /// Loads the configuration, waiting for it (at start, before any
    /// runtime runs).
    pub fn load_blocking(&self) -> Result<LoadedConfig, ConfigError> {
        self.ask()
            .blocking_recv()
            .unwrap_or_else(|_| Err(Self::gone()))
    }

    /// Loads the configuration (a reload).
    pub async fn load(&self) -> Result<LoadedConfig, ConfigError> {
        self.ask().await.unwrap_or_else(|_| Err(Self::gone()))
    }

    /// Says whether the last load's configuration went into use.
    pub fn settle(&self, in_use: bool) {
        let _ = self.requests.send(Request::Settle(in_use));
    }
}

struct ConfigThread {
    proxy: ProxyConfig,
    stores: Arc<StoreRegistry>,
    stats: Arc<ProxyStats>,
    reload: Arc<Notify>,
    server_stats: StatsSource,
    /// Made by the first load, kept after.
    vm: Option<ConfigVm>,
}

struct ConfigVm {
    lua: Lua,
    crons: Rc<Crons>,
    reload: Rc<ReloadRequest>,
}

impl ConfigThread {
    fn run(&mut self, inbox: mpsc::Receiver<Request>) {
        loop {
            let wake = self.vm.as_ref().and_then(|vm| {
                [vm.crons.next_due(), vm.reload.due()]
                    .into_iter()
                    .flatten()
                    .min()
            });
            let request = match wake {
                Some(at) => inbox.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match request {
                Ok(Request::Load(reply)) => {
                    let loaded = self.load();
                    let _ = reply.send(loaded);
                }
                Ok(Request::Settle(in_use)) => {
                    if let Some(vm) = &self.vm {
                        if in_use {
                            vm.crons.commit_load();
                        } else {
                            vm.crons.abort_load();
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if let Some(vm) = &self.vm {
                let now = Instant::now();
                vm.crons.run_due(now, &self.stats);
                if vm.reload.take_due(Instant::now()) {
                    tracing::info!("configuration reload scheduled by mcp.schedule_config_reload");
                    self.reload.notify_one();
                }
            }
        }
    }

    fn load(&mut self) -> Result<LoadedConfig, ConfigError> {
        if is_mcrouter(&self.proxy) {
            return super::config::load_config(&self.proxy, &self.stores);
        }
        if self.vm.is_none() {
            let lua = vm::new_vm(&self.proxy)?;
            lua.set_app_data(self.server_stats.clone());
            let (crons, reload) = super::cron::state(&lua);
            self.vm = Some(ConfigVm { lua, crons, reload });
        }
        let vm = self
            .vm
            .as_ref()
            .ok_or_else(|| ConfigError::Invalid("no config VM".into()))?;
        vm.crons.begin_load();
        let loaded = load_into(&vm.lua, &self.proxy, &self.stores);
        if loaded.is_err() {
            vm.crons.abort_load();
        }
        // The last load's pools, backends and discoveries are garbage in a
        // VM that lives on: collect them now (twice, so objects with
        // finalizers go too, as memcached does), not whenever Lua next
        // would; a discovery's polling thread stops only then.
        for _ in 0..2 {
            if let Err(e) = vm.lua.gc_collect() {
                tracing::warn!("config VM garbage collection failed: {e}");
            }
        }
        loaded
    }
}
