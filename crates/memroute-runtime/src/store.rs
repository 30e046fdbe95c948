//! Stores other than memcached servers that a pool can stand for (today:
//! DynamoDB tables), and the process-wide registry of them.
//!
//! Unlike memcached backends, whose connections belong to one worker, such a
//! store is shared by every worker: a write-behind queue must see every
//! write of a key to keep them in order. The registry keeps one store per
//! distinct configuration, so a reload that keeps a table's settings keeps
//! its store (and its queue), and so `stats` and shutdown can reach every
//! store. The registry is a value the server owns ([`StoreRegistry`]), not
//! a global.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memroute_proto::{Request, Response};

/// A shared store that executes memcached requests.
pub trait SharedStore: Send + Sync + 'static {
    /// A short name for `stats` and logs.
    fn name(&self) -> &str;

    /// Executes `request` (without `noreply`/`q`; the caller handles them)
    /// and returns memcached's reply.
    fn execute<'a>(&'a self, request: &'a Request) -> Pin<Box<dyn Future<Output = Response> + 'a>>;

    /// Counters for `stats`, as `(field, value)`.
    fn stats(&self) -> Vec<(String, u64)>;

    /// Blocks until queued writes are stored or `timeout` passes; returns a
    /// line for the log.
    fn drain(&self, timeout: Duration) -> String;

    /// One page of every live item, for warming a cache: up to `limit` items
    /// after the key `start`, and the key to continue from (`None` at the
    /// end). Stores that cannot be listed say so.
    fn scan_page(
        &self,
        _start: Option<String>,
        _limit: i32,
    ) -> Pin<Box<dyn Future<Output = Result<ScanPage, String>> + '_>> {
        let name = self.name().to_string();
        Box::pin(async move { Err(format!("{name} cannot be listed")) })
    }
}

/// Items of one [`SharedStore::scan_page`] call and where to continue.
pub type ScanPage = (Vec<StoredItem>, Option<String>);

/// An item as a store lists it.
#[derive(Debug, Clone)]
pub struct StoredItem {
    pub key: Vec<u8>,
    pub value: bytes::Bytes,
    pub flags: u32,
    /// Absolute Unix time; 0 = never expires.
    pub expires: i64,
}

type Entry = (String, Arc<dyn SharedStore>);

/// The shared stores of one server process, one per distinct
/// configuration, and the warm-ups started from them. The server makes one
/// and hands it to the config VM (which registers stores), to every worker
/// (warm-ups), and to `stats`, the metrics endpoint and shutdown (which
/// reach every store).
#[derive(Default)]
pub struct StoreRegistry {
    stores: Mutex<Vec<Entry>>,
    warmups: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for StoreRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.all().iter().map(|s| s.name().to_string()).collect();
        f.debug_struct("StoreRegistry")
            .field("stores", &names)
            .finish()
    }
}

impl StoreRegistry {
    /// The store registered under `identity` (its full configuration), or
    /// a new one from `make`, registered for next time.
    pub fn get_or_create<E>(
        &self,
        identity: &str,
        make: impl FnOnce() -> Result<Arc<dyn SharedStore>, E>,
    ) -> Result<Arc<dyn SharedStore>, E> {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, store)) = stores.iter().find(|(id, _)| id == identity) {
            return Ok(store.clone());
        }
        let store = make()?;
        stores.push((identity.to_string(), store.clone()));
        Ok(store)
    }

    /// Every store created so far.
    pub fn all(&self) -> Vec<Arc<dyn SharedStore>> {
        self.stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Whether the warm-up named `pair` (`STORE -> CACHE`) is yet to run:
    /// true once per process. Every worker, and every reload, runs
    /// `mcp_config_routes`, and a cache is warmed once.
    pub fn first_warm(&self, pair: &str) -> bool {
        self.warmups
            .lock()
            .map(|mut done| done.insert(pair.to_string()))
            .unwrap_or(false)
    }
}
