//! Stores other than memcached servers that a pool can stand for (today:
//! DynamoDB tables), and the process-wide registry of them.
//!
//! Unlike memcached backends, whose connections belong to one worker, such a
//! store is shared by every worker: a write-behind queue must see every
//! write of a key to keep them in order. The registry keeps one store per
//! distinct configuration, so a reload that keeps a table's settings keeps
//! its store (and its queue), and so `stats` and shutdown can reach every
//! store.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use memroute_proto::{Request, Response};

/// A shared store that executes memcached requests.
pub trait SharedStore: Send + Sync + 'static {
    /// A short name for `stats` and logs.
    fn name(&self) -> &str;

    /// Executes `request` (without `noreply`/`q`; the caller handles them)
    /// and returns memcached's reply. A store answers with a typed reply
    /// and frames it with [`Reply::to_response`](memroute_proto::Reply::to_response):
    /// encoded once, its code known, never parsed back.
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

fn registry() -> &'static Mutex<Vec<Entry>> {
    static STORES: OnceLock<Mutex<Vec<Entry>>> = OnceLock::new();
    STORES.get_or_init(|| Mutex::new(Vec::new()))
}

/// The store registered under `identity` (its full configuration), or a new
/// one from `make`, registered for next time.
pub fn get_or_create<E>(
    identity: &str,
    make: impl FnOnce() -> Result<Arc<dyn SharedStore>, E>,
) -> Result<Arc<dyn SharedStore>, E> {
    let mut stores = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, store)) = stores.iter().find(|(id, _)| id == identity) {
        return Ok(store.clone());
    }
    let store = make()?;
    stores.push((identity.to_string(), store.clone()));
    Ok(store)
}

/// Every store created so far.
pub fn all() -> Vec<Arc<dyn SharedStore>> {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, s)| s.clone())
        .collect()
}
