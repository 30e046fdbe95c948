//! Executes memcached requests against a DynamoDB table.
//!
//! One [`DynamoStore`] serves one table configuration and is shared by all
//! of memroute's worker threads. It owns a small tokio runtime on which all
//! AWS SDK I/O and the write-behind writer run; [`DynamoStore::execute`] can
//! be awaited from any runtime (memroute's per-worker current-thread
//! runtimes included) and answers exactly what memcached would.
//!
//! Two write modes (see docs/dynamodb.md for the guarantees):
//! - [`WriteMode::Through`]: every reply waits for DynamoDB.
//! - [`WriteMode::Behind`]: `set` (and `delete`/`touch` of a key whose state
//!   is already queued) are acknowledged once queued; the queue keeps
//!   per-key order, coalesces, is bounded with backpressure, retries
//!   transient failures indefinitely and is drained on shutdown. An
//!   optional spool (`spool`) keeps acknowledged writes on local disk
//!   until DynamoDB has them, so a crash of the process loses none.
//!   Commands that need the current item (add, cas, incr, ...) wait for the
//!   key's queued writes, then run write-through.
//!
//! Requests of one key run in the order they started, as on a memcached
//! connection, though memroute pipelines them (see `order`).
//!
//! Per-key ordering of writes rests on versions: every write carries a version (a
//! microsecond clock forced monotonic) in the `cas` attribute, and is
//! conditional on the stored version not being higher.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;
use bytes::Bytes;
use memroute_proto::{Command, Request, Response};
use tokio::runtime::{Handle, Runtime};

mod behind;
mod clock;
mod direct;
mod item;
mod ops;
mod order;
mod session;
mod spool;
mod stats;
mod table;

use behind::{ExclusiveGuard, Job, Local, Queue, QueuedOp};
use clock::{absolute_expiry, now_secs, observe_version};
pub use item::Item;
use item::Names;
use memroute_proto::{ErrorReply, Reply, StoreMode};
use ops::{decide, CasRule, KeyOp, Outcome, Plan, Write};
use order::{Access, KeyOrder};
pub use session::PhpSessionFormat;
pub use spool::{
    FsyncPolicy, SpoolConfig, SpoolStats, DEFAULT_SPOOL_MAX_BYTES, MIN_SPOOL_MAX_BYTES,
};
use stats::Counters;
pub use stats::DynamoStats;
use table::{Cond, DdbError, Table, BATCH_GET_MAX};

/// DynamoDB's item size limit in bytes (400 KB, attribute names included).
pub const MAX_ITEM_SIZE: usize = item::MAX_ITEM_SIZE;

/// How many queued writes the write-behind writer sends at once.
pub const WRITE_CONCURRENCY: usize = 32;

/// Default [`DynamoConfig::batch_linger`].
pub const DEFAULT_BATCH_LINGER: Duration = Duration::from_millis(5);

/// How often a read-modify-write is tried when other writers keep changing
/// the item in between.
const RMW_ATTEMPTS: u32 = 32;

/// Write-behind retry backoff bounds (exponential, with jitter).
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(250);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How a store acknowledges writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// The reply waits until DynamoDB has the write.
    #[default]
    Through,
    /// The reply is sent once the write is queued; a writer sends it later,
    /// in per-key order.
    Behind,
}

/// What sends a write-behind pool's queued writes to DynamoDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BehindWriter {
    /// The writer's own signed requests (`direct` module): about a fifth
    /// of the SDK's cost per write. Checked on the wire against aws-sigv4
    /// (tests/wire_signature.rs), not yet run against real AWS, so it is
    /// chosen, not the default.
    Direct,
    /// The AWS SDK's PutItem/DeleteItem/BatchWriteItem: the default until
    /// the direct writer has been run against real AWS.
    #[default]
    Sdk,
}

/// One table configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoConfig {
    pub table: String,
    /// Default: the standard aws-config chain, else "us-east-1".
    pub region: Option<String>,
    /// Endpoint override, e.g. "http://127.0.0.1:8000" for DynamoDB Local.
    pub endpoint: Option<String>,
    /// String partition key attribute.
    pub key_attr: String,
    /// Binary value attribute.
    pub value_attr: String,
    /// Number attribute: memcached client flags.
    pub flags_attr: String,
    /// Number attribute: absolute expiry in epoch seconds; absent = never.
    pub expires_attr: String,
    /// Number attribute: per-key version, used as the CAS unique and for
    /// write ordering.
    pub cas_attr: String,
    pub consistent_read: bool,
    pub write_mode: WriteMode,
    /// Write-behind: send writes that are ready together in BatchWriteItem
    /// calls (up to 25 keys) instead of one conditional PutItem/DeleteItem
    /// each. Batched writes cannot carry the version condition, so per-key
    /// order then holds within this proxy only (its queue keeps one write
    /// per key in flight), not against other processes writing the same
    /// keys. About 3.5x less work for DynamoDB per write (docs/dynamodb.md).
    pub batch_writes: bool,
    /// With `batch_writes`: how long the writer waits for more ready writes
    /// to fill a batch before it sends a partial one. Acknowledged writes
    /// land this much later; far fewer DynamoDB calls are made under load.
    /// Ignored without `batch_writes`.
    pub batch_linger: Duration,
    /// Write-behind: what sends the queued writes. Ignored for
    /// write-through (every write-through call goes through the SDK).
    pub writer: BehindWriter,
    /// Write-behind bound: keys with queued writes.
    pub queue_max_keys: usize,
    /// Write-behind bound: bytes of queued writes.
    pub queue_max_bytes: usize,
    /// How long a write waits for room in a full queue before it is refused
    /// with `SERVER_ERROR out of memory storing object` (never acknowledged).
    pub backpressure_timeout: Duration,
    /// SDK attempts per call (standard retry mode).
    pub max_attempts: u32,
    /// SDK operation timeout per call (all attempts).
    pub operation_timeout: Option<Duration>,
    /// Create the table (on-demand billing) if it is missing.
    pub create_table: bool,
    /// Strip this prefix from keys before using them as ids.
    pub key_prefix_strip: Option<String>,
    /// Store PHP sessions in the AWS SDK for PHP's table format instead of
    /// memcached items (write-through only; `value_attr` names the data
    /// attribute, normally "data"). See the `session` module.
    pub php_session: Option<PhpSessionFormat>,
    /// Write-behind only: keep acknowledged writes in an append-only log on
    /// local disk until DynamoDB has them, and replay them at start (see
    /// docs/dynamodb.md, "Spool").
    pub spool: Option<SpoolConfig>,
}

impl Default for DynamoConfig {
    fn default() -> Self {
        DynamoConfig {
            table: "memroute".into(),
            region: None,
            endpoint: None,
            key_attr: "id".into(),
            value_attr: "value".into(),
            flags_attr: "flags".into(),
            expires_attr: "expires".into(),
            cas_attr: "cas".into(),
            consistent_read: true,
            write_mode: WriteMode::Through,
            batch_writes: false,
            batch_linger: DEFAULT_BATCH_LINGER,
            writer: BehindWriter::Sdk,
            queue_max_keys: 100_000,
            queue_max_bytes: 256 * 1024 * 1024,
            backpressure_timeout: Duration::from_secs(1),
            max_attempts: 3,
            operation_timeout: Some(Duration::from_secs(5)),
            create_table: false,
            key_prefix_strip: None,
            php_session: None,
            spool: None,
        }
    }
}

/// Why a store could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DynamoError {
    #[error("invalid DynamoDB pool configuration: {0}")]
    Config(String),
    #[error("cannot start the DynamoDB runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("DynamoDB table {table}: {message}")]
    Table { table: String, message: String },
}

/// What [`DynamoStore::drain_blocking`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainReport {
    /// Whether the queue emptied before the timeout.
    pub drained: bool,
    /// Keys with writes still queued (0 when drained).
    pub remaining_keys: usize,
    /// Bytes still queued.
    pub remaining_bytes: usize,
    /// Writes given up after permanent errors, over the store's life.
    pub failed: u64,
    /// With a spool: whether everything acknowledged is on disk there
    /// (synced), so what was not drained is replayed at the next start.
    pub spooled: bool,
}

/// Executes memcached requests against one DynamoDB table.
pub struct DynamoStore {
    inner: Arc<Inner>,
    handle: Handle,
    runtime: Option<Runtime>,
}

struct Inner {
    config: DynamoConfig,
    table: Table,
    /// Write-behind only: sends the queued writes (see [`direct`]).
    direct: Option<direct::DirectClient>,
    names: Names,
    queue: Queue,
    counters: Counters,
    /// Runs the requests of a key in the order they started.
    order: KeyOrder,
    /// Wakes writes waiting out a retry backoff when shutdown starts
    /// draining, so a table that came back is written at once rather than
    /// after a backoff of up to [`RETRY_BACKOFF_MAX`].
    draining: Draining,
}

/// Set when shutdown drains the write-behind queue (see [`Retry::pause`]).
#[derive(Default)]
struct Draining {
    started: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl Draining {
    fn start(&self) {
        self.started
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_waiters();
    }

    fn started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The longest retry backoff while shutdown drains the queue.
const DRAIN_BACKOFF_MAX: Duration = Duration::from_millis(500);

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.inner.config.table)
            .field("write_mode", &self.inner.config.write_mode)
            .finish()
    }
}

fn validate(c: &DynamoConfig) -> Result<(), DynamoError> {
    let bad = |m: &str| Err(DynamoError::Config(m.to_owned()));
    if c.table.len() < 3 || c.table.len() > 255 {
        return bad("table name must be 3 to 255 characters");
    }
    let attrs = [
        &c.key_attr,
        &c.value_attr,
        &c.flags_attr,
        &c.expires_attr,
        &c.cas_attr,
    ];
    if attrs.iter().any(|a| a.is_empty()) {
        return bad("attribute names must not be empty");
    }
    for (i, a) in attrs.iter().enumerate() {
        if attrs[i + 1..].contains(a) {
            return bad("attribute names must be distinct");
        }
    }
    if c.max_attempts == 0 {
        return bad("max_attempts must be at least 1");
    }
    if c.batch_writes && c.write_mode != WriteMode::Behind {
        return bad("batch_writes needs write = \"behind\"");
    }
    if let Some(f) = &c.php_session {
        if c.write_mode != WriteMode::Through {
            return bad("the php_session format needs write = \"through\" (session locks cannot wait in a queue)");
        }
        if c.key_prefix_strip.is_some() {
            return bad("the php_session format names its ids itself (no key prefix strip)");
        }
        if f.session_name.is_empty() || !f.session_name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return bad("session_name must be letters and digits (PHP's session.name)");
        }
        let reserved = [session::LOCK_ATTR, session::LOCK_EXPIRES_ATTR];
        if [&c.key_attr, &c.value_attr, &c.expires_attr]
            .iter()
            .any(|a| reserved.contains(&a.as_str()))
        {
            return bad("attributes \"lock\" and \"lock_expires\" are the session lock's");
        }
    }
    if c.write_mode == WriteMode::Behind && (c.queue_max_keys == 0 || c.queue_max_bytes == 0) {
        return bad("queue_max_keys and queue_max_bytes must be positive");
    }
    if let Some(spool) = &c.spool {
        if c.write_mode != WriteMode::Behind {
            return bad("spool needs write = \"behind\" (write-through has nothing to keep)");
        }
        if spool.dir.as_os_str().is_empty() {
            return bad("spool must name a directory");
        }
        if spool.max_bytes < MIN_SPOOL_MAX_BYTES {
            return bad("spool_max_bytes must be at least 1048576 (1 MiB)");
        }
        if let FsyncPolicy::Interval(every) = spool.fsync {
            if every.is_zero() || every > Duration::from_secs(60) {
                return bad("spool_fsync interval must be 1 ms to 60 s");
            }
        }
    }
    Ok(())
}

/// Whether `endpoint` points at this machine (DynamoDB Local).
fn is_loopback(endpoint: &str) -> bool {
    let host = endpoint
        .split("://")
        .nth(1)
        .unwrap_or(endpoint)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(host, "localhost" | "[::1]") || host.starts_with("127.")
}

async fn build_client(c: &DynamoConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(build_config(c).await.0)
}

/// The SDK client configuration (endpoint, region, credentials chain,
/// retries and timeouts), with the shared configuration it came from.
async fn build_config(c: &DynamoConfig) -> (aws_sdk_dynamodb::Config, aws_config::SdkConfig) {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let retry = RetryConfig::standard()
        .with_max_attempts(c.max_attempts)
        .with_initial_backoff(Duration::from_millis(25))
        .with_max_backoff(Duration::from_secs(1));
    let mut timeouts = TimeoutConfig::builder().connect_timeout(Duration::from_secs(2));
    if let Some(t) = c.operation_timeout {
        timeouts = timeouts.operation_timeout(t);
    }
    let timeouts = timeouts.build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(region) = &c.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &c.endpoint {
        loader = loader.endpoint_url(endpoint);
        // DynamoDB Local accepts any credentials; with none configured in
        // the environment, use fixed ones rather than probing IMDS.
        let configured = [
            "AWS_ACCESS_KEY_ID",
            "AWS_PROFILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
        if is_loopback(endpoint) && !configured {
            // (DynamoDB Local v2+ wants an access key of letters and digits.)
            loader = loader.credentials_provider(Credentials::new(
                "memroutelocal",
                "memroutelocal",
                None,
                None,
                "memroute-dynamodb-local",
            ));
        }
    }
    let sdk = loader.load().await;
    let mut builder = aws_sdk_dynamodb::config::Builder::from(&sdk);
    if sdk.region().is_none() {
        builder = builder.region(Region::new("us-east-1"));
    }
    (builder.build(), sdk)
}

/// The write-behind writer's client for `conf` (see [`direct`]): the
/// endpoint the SDK's rules resolve for this configuration, once, and the
/// SDK client's credentials provider.
async fn direct_client(
    c: &DynamoConfig,
    conf: &aws_sdk_dynamodb::Config,
    sdk: &aws_config::SdkConfig,
) -> Result<direct::DirectClient, DdbError> {
    use aws_sdk_dynamodb::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
    let region = conf
        .region()
        .map_or_else(|| "us-east-1".to_owned(), |r| r.as_ref().to_owned());
    let mut params = Params::builder()
        .region(region.clone())
        .use_fips(sdk.use_fips().unwrap_or(false))
        .use_dual_stack(sdk.use_dual_stack().unwrap_or(false))
        .account_id_endpoint_mode("disabled");
    if let Some(url) = &c.endpoint {
        params = params.endpoint(url.clone());
    }
    let params = params
        .build()
        .map_err(|e| DdbError::Permanent(format!("endpoint parameters: {e}")))?;
    let endpoint = DefaultResolver::new()
        .resolve_endpoint(&params)
        .await
        .map_err(|e| DdbError::Permanent(format!("resolving the endpoint: {e}")))?;
    direct::DirectClient::new(
        endpoint.url(),
        region,
        sdk.credentials_provider(),
        c.table.clone(),
        Names::from_config(c),
        c.max_attempts,
        c.operation_timeout,
    )
    .map_err(DdbError::Permanent)
}

/// The SDK client a store with `config` uses (same endpoint, region,
/// credentials chain, retries and timeouts), for tools and tests that look
/// at the table directly.
pub async fn sdk_client(config: &DynamoConfig) -> aws_sdk_dynamodb::Client {
    build_client(config).await
}

/// Whether `op` leaves its item as it is (see [`order`]).
fn access(op: &KeyOp) -> Access {
    match op {
        KeyOp::Read { touch: None } => Access::Read,
        _ => Access::Write,
    }
}

impl DynamoStore {
    /// Builds the SDK client and, for write-behind, starts the writer.
    /// Need not (and should not) be called from inside a tokio runtime's
    /// async context: it blocks while the client is built (and the table
    /// created, with `create_table`).
    pub fn new(config: DynamoConfig) -> Result<Arc<DynamoStore>, DynamoError> {
        validate(&config)?;
        // The spool first: a bad directory is reported before any network
        // setup, and its writes are read back before anything is served.
        let space = Arc::new(tokio::sync::Notify::new());
        let spool = match &config.spool {
            None => None,
            Some(sc) => {
                let owner = format!("the DynamoDB pool of table {}", config.table);
                let (spool, recovered) =
                    spool::Spool::open(sc, &owner, &config.table, Arc::clone(&space))
                        .map_err(DynamoError::Config)?;
                for damage in &recovered.damage {
                    tracing::warn!(table = %config.table, "write-behind spool damaged: {damage}");
                }
                Some((spool, recovered.writes))
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("memroute-dynamo")
            .enable_all()
            .build()?;
        // block_on panics inside another runtime's context; a scoped thread
        // has none.
        let setup = std::thread::scope(|s| {
            s.spawn(|| {
                runtime.block_on(async {
                    let (conf, sdk) = build_config(&config).await;
                    let direct = match (config.write_mode, config.writer) {
                        (WriteMode::Behind, BehindWriter::Direct) => {
                            Some(direct_client(&config, &conf, &sdk).await?)
                        }
                        (WriteMode::Behind, BehindWriter::Sdk) | (WriteMode::Through, _) => None,
                    };
                    let client = aws_sdk_dynamodb::Client::from_conf(conf);
                    let names = Names::from_config(&config);
                    let table =
                        Table::new(client, config.table.clone(), names, config.consistent_read);
                    if config.create_table {
                        table.create_if_missing().await?;
                    }
                    Ok::<(Table, Option<direct::DirectClient>), DdbError>((table, direct))
                })
            })
            .join()
        });
        let (table, direct) = match setup {
            Ok(Ok(built)) => built,
            Ok(Err(e)) => {
                runtime.shutdown_background();
                return Err(DynamoError::Table {
                    table: config.table.clone(),
                    message: e.describe(),
                });
            }
            Err(_) => {
                runtime.shutdown_background();
                return Err(DynamoError::Config("client setup panicked".into()));
            }
        };
        let (spool, replay) = match spool {
            Some((spool, writes)) => (Some(spool), writes),
            None => (None, Vec::new()),
        };
        let inner = Arc::new(Inner {
            names: Names::from_config(&config),
            queue: Queue::new(config.queue_max_keys, config.queue_max_bytes, space, spool),
            table,
            direct,
            counters: Counters::default(),
            order: KeyOrder::default(),
            draining: Draining::default(),
            config,
        });
        if let Some(spool) = inner.queue.spool() {
            let n = replay.len();
            inner.queue.replay(replay);
            if n > 0 {
                tracing::warn!(
                    table = %inner.config.table,
                    spool = %spool.dir().display(),
                    writes = n,
                    "replaying acknowledged writes the write-behind spool kept (not confirmed by DynamoDB)"
                );
            }
        }
        if inner.config.write_mode == WriteMode::Behind {
            runtime.spawn(Arc::clone(&inner).run_writer());
        }
        Ok(Arc::new(DynamoStore {
            inner,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        }))
    }

    /// Executes one memcached request and returns exactly the reply
    /// memcached would send. Callable from any tokio runtime. `noreply` and
    /// meta `q` are the caller's business (the request runs as if they were
    /// absent).
    pub async fn execute(&self, request: &Request) -> Response {
        let inner = &self.inner;
        if let Some(format) = &inner.config.php_session {
            return match format.plan(request) {
                session::SessionPlan::Reply(answer) => answer.to_response(request),
                plan => {
                    self.on_store(request, |inner, request| async move {
                        inner.run_session(&request, plan).await
                    })
                    .await
                }
            };
        }
        let plan = ops::plan(request, inner.config.key_prefix_strip.as_deref());
        // Write-behind without a spool answers most requests of a key from
        // the queue, at once. With no other request of the key running or
        // waiting, that needs no turn (see `KeyOrder::run_if_idle`); what
        // the queue cannot answer takes its turn below like any request
        // (`try_local` changes nothing when it does not answer).
        if let Plan::Single { id, op } = &plan {
            if inner.behind() && inner.queue.spool().is_none() {
                let now = now_secs();
                let fits = |len: usize| inner.names.fits(id, len);
                let local = inner.order.run_if_idle(id, || {
                    inner.queue.try_local(id, op, now, &fits, &inner.counters)
                });
                if let Some(Local::Done(outcome, _)) = local {
                    return inner.render_single(request, &outcome);
                }
            }
        }
        // Held until the reply is made: later requests of these keys wait.
        let _turns = match &plan {
            Plan::Reply(answer) => return answer.to_response(request),
            Plan::Single { id, op } => {
                inner
                    .order
                    .turns(std::slice::from_ref(id), access(op))
                    .await
            }
            Plan::Get { ids, touch } => {
                let access = if touch.is_some() {
                    Access::Write
                } else {
                    Access::Read
                };
                inner.order.turns(ids, access).await
            }
        };
        // An answer from the queue that must wait for the spool, boxed: the
        // futures of requests that need not wait stay small.
        let spooled = match &plan {
            Plan::Reply(answer) => return answer.to_response(request),
            // Write-behind answers many requests from the queue, without I/O:
            // do that on the caller's thread.
            Plan::Single { id, op } if inner.behind() => {
                let now = now_secs();
                let fits = |len: usize| inner.names.fits(id, len);
                if let Local::Done(outcome, ticket) =
                    inner.queue.try_local(id, op, now, &fits, &inner.counters)
                {
                    match inner.queue.unacked(ticket) {
                        None => return inner.render_single(request, &outcome),
                        Some(t) => Some(Box::pin(
                            inner.reply_when_spooled(request, outcome, t, false),
                        )),
                    }
                } else {
                    None
                }
            }
            Plan::Get { ids, touch: None } if inner.behind() && ids.len() == 1 => {
                let fits = |len: usize| inner.names.fits(&ids[0], len);
                let read = KeyOp::Read { touch: None };
                if let (Local::Done(outcome, ticket), Command::Get(get)) = (
                    inner
                        .queue
                        .try_local(&ids[0], &read, now_secs(), &fits, &inner.counters),
                    request.command(),
                ) {
                    match inner.queue.unacked(ticket) {
                        None => {
                            return ops::render_get(request, &get.keys[..1], &[outcome], now_secs())
                        }
                        Some(t) => Some(Box::pin(
                            inner.reply_when_spooled(request, outcome, t, true),
                        )),
                    }
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(reply) = spooled {
            return reply.await;
        }
        self.on_store(request, |inner, request| async move {
            match plan {
                Plan::Reply(answer) => answer.to_response(&request),
                Plan::Single { id, op } => {
                    let outcome = inner.single(&id, &op).await;
                    inner.render_single(&request, &outcome)
                }
                Plan::Get { ids, touch } => inner.multi_get(&request, &ids, touch).await,
            }
        })
        .await
    }

    /// Runs `work` on the store's own runtime, where the SDK's I/O lives,
    /// and waits for its reply from the caller's runtime.
    async fn on_store<F, Fut>(&self, request: &Request, work: F) -> Response
    where
        F: FnOnce(Arc<Inner>, Request) -> Fut,
        Fut: std::future::Future<Output = Response> + Send + 'static,
    {
        let task = self
            .handle
            .spawn(work(Arc::clone(&self.inner), request.clone()));
        match task.await {
            Ok(response) => response,
            Err(_) => {
                self.inner.counters.errors.incr();
                Reply::from(ErrorReply::BackendFailure).to_response(request)
            }
        }
    }

    /// Waits until the write-behind queue is empty or `timeout` passes, for
    /// graceful shutdown. Blocks the calling thread: call it from a thread
    /// that is not driving async tasks.
    pub fn drain_blocking(&self, timeout: Duration) -> DrainReport {
        let start = std::time::Instant::now();
        self.inner.draining.start();
        let (keys, bytes) = self.inner.queue.wait_empty(timeout);
        // Everything acknowledged, and every confirm, onto the disk; with
        // the queue empty this also deletes the spool's segments.
        let spooled = self.inner.queue.spool().is_some_and(|spool| {
            let left = timeout.saturating_sub(start.elapsed());
            spool.flush_blocking(left.max(Duration::from_secs(5)))
        });
        DrainReport {
            drained: keys == 0,
            remaining_keys: keys,
            remaining_bytes: bytes,
            failed: self.inner.counters.failed.get(),
            spooled,
        }
    }

    pub fn stats(&self) -> DynamoStats {
        let mut stats = self.inner.counters.snapshot(self.inner.queue.depth());
        stats.spool = self.inner.queue.spool().map(|s| s.stats());
        stats
    }

    /// The spool's directory (canonical), if the store has one.
    pub fn spool_dir(&self) -> Option<&std::path::Path> {
        self.inner.queue.spool().map(|s| s.dir())
    }

    /// One page of a table scan, for warming a cache from the table: up to
    /// `limit` live items (expired ones are skipped) with their memcached
    /// keys, after the id `start`, and the id to pass for the next page
    /// (`None` at the end). Callable from any tokio runtime.
    pub async fn scan_page(
        &self,
        start: Option<String>,
        limit: i32,
    ) -> Result<(Vec<(Vec<u8>, Item)>, Option<String>), DynamoError> {
        let inner = Arc::clone(&self.inner);
        let task = self
            .handle
            .spawn(async move { inner.table.scan_page(start, limit).await });
        match task.await {
            Ok(Ok((items, next))) => {
                let now = now_secs();
                let strip = self.inner.config.key_prefix_strip.as_deref();
                let live = items
                    .into_iter()
                    .filter(|(_, i)| i.is_live(now))
                    .map(|(id, item)| (ops::id_to_key(&id, strip), item))
                    .collect();
                Ok((live, next))
            }
            Ok(Err(e)) => Err(DynamoError::Table {
                table: self.inner.config.table.clone(),
                message: e.describe(),
            }),
            Err(e) => Err(DynamoError::Table {
                table: self.inner.config.table.clone(),
                message: e.to_string(),
            }),
        }
    }

    pub fn config(&self) -> &DynamoConfig {
        &self.inner.config
    }
}

impl Drop for DynamoStore {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let (keys, _, _) = self.inner.queue.depth();
        if keys == 0 {
            // Safe from any context, async included.
            runtime.shutdown_background();
            return;
        }
        // Acknowledged writes are still queued (the store was dropped
        // without drain_blocking, e.g. replaced by a reload): let them land
        // from a background thread rather than lose them.
        tracing::warn!(
            table = %self.inner.config.table,
            keys,
            "DynamoDB store dropped with queued writes; draining in the background"
        );
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("memroute-dynamo-drain".into())
            .spawn(move || {
                let (left, _) = inner.queue.wait_empty(Duration::from_secs(300));
                if left > 0 {
                    tracing::error!(
                        table = %inner.config.table,
                        keys = left,
                        "gave up draining DynamoDB write-behind queue"
                    );
                }
                runtime.shutdown_background();
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start drain thread: {e}");
        }
    }
}

impl Inner {
    fn behind(&self) -> bool {
        self.config.write_mode == WriteMode::Behind
    }

    fn fits(&self, id: &str) -> impl Fn(usize) -> bool + '_ {
        let names = &self.names;
        let id = id.to_owned();
        move |len| names.fits(&id, len)
    }

    fn render_single(&self, request: &Request, outcome: &Outcome) -> Response {
        match outcome {
            Outcome::Failed | Outcome::SpoolFailed => self.counters.errors.incr(),
            Outcome::TooLarge => self.counters.too_large.incr(),
            Outcome::NoMemory => self.counters.rejected.incr(),
            Outcome::SpoolFull => self.counters.spool_rejected.incr(),
            _ => {}
        }
        ops::render_single(request, outcome, now_secs())
    }

    /// One single-key operation, in the configured mode.
    async fn single(&self, id: &str, op: &KeyOp) -> Outcome {
        if !self.behind() {
            return self.direct(id, op, clock::next_version()).await;
        }
        let deadline = tokio::time::Instant::now() + self.config.backpressure_timeout;
        loop {
            let space = self.queue.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            let fits = self.fits(id);
            match self
                .queue
                .try_local(id, op, now_secs(), &fits, &self.counters)
            {
                Local::Done(outcome, ticket) => return self.acked(outcome, ticket).await,
                Local::Read => return self.direct(id, op, 0).await,
                Local::Exclusive => return self.exclusive(id, op).await,
                Local::SpoolFailed => return Outcome::SpoolFailed,
                full @ (Local::Full | Local::SpoolFull) => {
                    if tokio::time::timeout_at(deadline, space).await.is_err() {
                        return match full {
                            Local::SpoolFull => Outcome::SpoolFull,
                            _ => Outcome::NoMemory,
                        };
                    }
                }
            }
        }
    }

    /// The reply to `request` once the spool has `ticket` on disk.
    async fn reply_when_spooled(
        &self,
        request: &Request,
        outcome: Outcome,
        ticket: spool::Ticket,
        get: bool,
    ) -> Response {
        let outcome = self.acked(outcome, Some(ticket)).await;
        match (get, request.command()) {
            (true, Command::Get(g)) => {
                ops::render_get(request, &g.keys[..1], &[outcome], now_secs())
            }
            _ => self.render_single(request, &outcome),
        }
    }

    /// `outcome` once its spool ticket (if any) is on disk; a write the
    /// spool could not keep is not acknowledged.
    async fn acked(&self, outcome: Outcome, ticket: Option<spool::Ticket>) -> Outcome {
        match self.queue.wait_ack(ticket).await {
            Ok(()) => outcome,
            Err(_) => Outcome::SpoolFailed,
        }
    }

    /// Waits for the key's earlier queued writes, then runs write-through
    /// while later writes of the key wait.
    async fn exclusive(&self, id: &str, op: &KeyOp) -> Outcome {
        let (ticket, granted, version) = self.queue.register_exclusive(id);
        let _guard = ExclusiveGuard {
            queue: &self.queue,
            id,
            ticket,
        };
        let wait = self
            .config
            .operation_timeout
            .unwrap_or(Duration::from_secs(30));
        match tokio::time::timeout(wait, granted).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Outcome::Failed,
            Err(_) => {
                tracing::warn!(
                    table = %self.config.table,
                    key = id,
                    "queued writes of the key did not land in time"
                );
                return Outcome::Failed;
            }
        }
        self.direct(id, op, version).await
    }

    /// Runs `op` against the table and waits for it. `version` is the
    /// version new items get (at least; above the stored one).
    async fn direct(&self, id: &str, op: &KeyOp, version: u64) -> Outcome {
        let now = now_secs();
        match op {
            KeyOp::Read { touch: None } => match self.read(id).await {
                Ok(Some(item)) => Outcome::Hit {
                    ttl_before: clock::remaining_ttl(item.expires, now),
                    item,
                },
                Ok(None) => Outcome::Miss,
                Err(e) => self.failed(id, "GetItem", &e),
            },
            KeyOp::Read { touch: Some(t) } | KeyOp::Touch { exptime: t } => {
                let expires = absolute_expiry(*t, now);
                self.counters.sync_writes.incr();
                match self.table.touch(id, expires, now).await {
                    Ok(Some(old)) => match op {
                        KeyOp::Touch { .. } => Outcome::Touched,
                        _ => Outcome::Hit {
                            ttl_before: clock::remaining_ttl(old.expires, now),
                            item: Item { expires, ..old },
                        },
                    },
                    Ok(None) => match op {
                        KeyOp::Touch { .. } => Outcome::NotFound,
                        _ => Outcome::Miss,
                    },
                    Err(e) => self.failed(id, "UpdateItem", &e),
                }
            }
            KeyOp::Delete { compare_cas: None } => {
                self.counters.sync_writes.incr();
                match self.table.delete(id, Cond::None).await {
                    Ok(Some(old)) if old.is_live(now) => Outcome::Deleted,
                    Ok(_) => Outcome::NotFound,
                    Err(e) => self.failed(id, "DeleteItem", &e),
                }
            }
            KeyOp::Store(s)
                if s.vivify.is_none()
                    && s.mode != StoreMode::Append
                    && s.mode != StoreMode::Prepend =>
            {
                self.store_once(id, op, s, version, now).await
            }
            _ => self.read_modify_write(id, op, version).await,
        }
    }

    /// set / add / replace / cas with one conditional PutItem.
    async fn store_once(
        &self,
        id: &str,
        op: &KeyOp,
        s: &ops::StoreSpec,
        version: u64,
        now: i64,
    ) -> Outcome {
        let decision = decide(op, None, now, &self.fits(id));
        // With no current item, decide() yields the new item for set/add
        // (replace and cas yield nothing; build the same item).
        let mut item = match decision.write {
            Write::Put(item) => item,
            _ if decision.outcome == Outcome::TooLarge => return Outcome::TooLarge,
            _ => Item {
                value: s.value.clone(),
                flags: s.flags,
                expires: absolute_expiry(s.exptime, now),
                cas: 0,
            },
        };
        if !self.names.fits(id, item.value.len()) {
            return Outcome::TooLarge;
        }
        item.cas = version;
        let cond = match (s.mode, s.compare_cas) {
            (StoreMode::Set, None) => Cond::VersionAtMost(version),
            (StoreMode::Add, _) => Cond::NotLive { now },
            (_, Some(cas)) => Cond::LiveCas { now, cas },
            (_, None) => Cond::Live { now },
        };
        self.counters.sync_writes.incr();
        let stored = Outcome::Stored { cas: version };
        match self.table.put(id, &item, cond).await {
            Ok(()) => stored,
            Err(DdbError::Condition(old)) => match cond {
                // A newer version is stored: this write is ordered before it.
                Cond::VersionAtMost(_) => stored,
                Cond::LiveCas { .. } => {
                    let old = match old {
                        Some(old) => Ok(Some(*old)),
                        None => self.table.get(id, true).await,
                    };
                    match old {
                        Ok(Some(old)) if old.is_live(now) => Outcome::Exists,
                        Ok(_) => Outcome::NotFound,
                        Err(e) => self.failed(id, "GetItem", &e),
                    }
                }
                _ => Outcome::NotStored,
            },
            Err(DdbError::TooLarge) => Outcome::TooLarge,
            Err(e) => self.failed(id, "PutItem", &e),
        }
    }

    /// Reads the item, decides, and writes conditionally on the item being
    /// unchanged; repeats when another writer got in between.
    async fn read_modify_write(&self, id: &str, op: &KeyOp, version: u64) -> Outcome {
        let fits = self.fits(id);
        for attempt in 0..RMW_ATTEMPTS {
            let raw = match self.table.get(id, true).await {
                Ok(raw) => raw,
                Err(e) => return self.failed(id, "GetItem", &e),
            };
            let now = now_secs();
            let live = raw.as_ref().filter(|i| i.is_live(now));
            let decision = decide(op, live, now, &fits);
            let cond = Cond::Unchanged(raw.as_ref().map(|i| (i.cas != 0).then_some(i.cas)));
            self.counters.sync_writes.incr();
            let result = match decision.write {
                Write::None => return decision.outcome,
                Write::Put(mut item) => {
                    let old_cas = raw.as_ref().map_or(0, |i| i.cas);
                    item.cas = match (decision.cas, live) {
                        (CasRule::Keep, Some(cur)) if cur.cas != 0 => cur.cas,
                        _ => version.max(old_cas.saturating_add(1)),
                    };
                    observe_version(item.cas);
                    let cas = item.cas;
                    self.table
                        .put(id, &item, cond)
                        .await
                        .map(|()| decision.outcome.clone().with_cas(cas))
                }
                Write::Delete => self
                    .table
                    .delete(id, cond)
                    .await
                    .map(|_| decision.outcome.clone()),
            };
            match result {
                Ok(outcome) => return outcome,
                Err(DdbError::Condition(_)) => {
                    self.counters.conflicts.incr();
                    let pause = 1 + u64::from(attempt) * 2 + jitter_ms(5);
                    tokio::time::sleep(Duration::from_millis(pause.min(50))).await;
                }
                Err(DdbError::TooLarge) => return Outcome::TooLarge,
                Err(e) => return self.failed(id, "write", &e),
            }
        }
        tracing::warn!(table = %self.config.table, key = id, "read-modify-write kept conflicting");
        Outcome::Failed
    }

    fn failed(&self, id: &str, call: &str, e: &DdbError) -> Outcome {
        tracing::warn!(table = %self.config.table, key = id, call, error = %e.describe(), "DynamoDB call failed");
        Outcome::Failed
    }

    /// A live item from the table, counting the read.
    async fn read(&self, id: &str) -> Result<Option<Item>, DdbError> {
        self.counters.reads.incr();
        let now = now_secs();
        let item = self.table.get(id, false).await?.filter(|i| i.is_live(now));
        if item.is_some() {
            self.counters.read_hits.incr();
        } else {
            self.counters.read_misses.incr();
        }
        Ok(item)
    }

    /// `get`/`gets`/`gat`/`gats`, any number of keys.
    async fn multi_get(&self, request: &Request, ids: &[String], touch: Option<i64>) -> Response {
        let Command::Get(get) = request.command() else {
            return Reply::from(ErrorReply::BackendFailure).to_response(request);
        };
        let mut outcomes: Vec<Option<Outcome>> = vec![None; ids.len()];
        if touch.is_some() || ids.len() == 1 {
            let op = KeyOp::Read { touch };
            for (i, id) in ids.iter().enumerate() {
                outcomes[i] = Some(self.single(id, &op).await);
            }
        } else {
            let now = now_secs();
            let read = KeyOp::Read { touch: None };
            let mut wanted: Vec<String> = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                if self.behind() {
                    let fits = self.fits(id);
                    if let Local::Done(o, ticket) =
                        self.queue.try_local(id, &read, now, &fits, &self.counters)
                    {
                        outcomes[i] = Some(self.acked(o, ticket).await);
                        continue;
                    }
                }
                if !wanted.contains(id) {
                    wanted.push(id.clone());
                }
            }
            let mut found: HashMap<String, Item> = HashMap::new();
            for chunk in wanted.chunks(BATCH_GET_MAX) {
                self.counters.reads.add(chunk.len() as u64);
                match self.table.batch_get(chunk).await {
                    Ok(items) => found.extend(items),
                    Err(e) => {
                        self.failed(&chunk[0], "BatchGetItem", &e);
                        self.counters.errors.incr();
                        return Reply::from(ErrorReply::BackendFailure).to_response(request);
                    }
                }
            }
            let now = now_secs();
            for (i, id) in ids.iter().enumerate() {
                if outcomes[i].is_some() {
                    continue;
                }
                let hit = found.get(id).filter(|item| item.is_live(now));
                outcomes[i] = Some(match hit {
                    Some(item) => Outcome::Hit {
                        item: item.clone(),
                        ttl_before: 0,
                    },
                    None => Outcome::Miss,
                });
            }
            for id in &wanted {
                if found.get(id).is_some_and(|item| item.is_live(now)) {
                    self.counters.read_hits.incr();
                } else {
                    self.counters.read_misses.incr();
                }
            }
        }
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Miss))
            .collect();
        if outcomes.contains(&Outcome::Failed) {
            self.counters.errors.incr();
        }
        let keys: Vec<Bytes> = get.keys.iter().cloned().collect();
        ops::render_get(request, &keys, &outcomes, now_secs())
    }

    /// The write-behind writer: sends queued writes, at most one per key and
    /// [`WRITE_CONCURRENCY`] calls in all at a time. With `batch_writes`,
    /// the writes ready when a call starts (up to 25) go in one
    /// BatchWriteItem; a lone write still goes alone, with its condition.
    async fn run_writer(self: Arc<Self>) {
        let permits = Arc::new(tokio::sync::Semaphore::new(WRITE_CONCURRENCY));
        let batch_max = if self.config.batch_writes {
            table::BATCH_WRITE_MAX
        } else {
            1
        };
        loop {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let Some(first) = self.next_ready(None).await else {
                continue; // (no deadline: never)
            };
            let mut jobs = vec![first];
            self.fill_batch(&mut jobs, batch_max).await;
            let inner = Arc::clone(&self);
            tokio::spawn(async move {
                if jobs.len() == 1 {
                    inner.send_queued(&jobs[0]).await;
                } else {
                    inner.send_batch(&jobs).await;
                }
                drop(permit);
                // With a spool, a key whose latest write this was moves on
                // only once the confirm record is on disk.
                let mut confirms = Vec::new();
                for job in &jobs {
                    if let Some(ticket) = inner.queue.landed(&job.id) {
                        confirms.push((&job.id, ticket));
                    }
                }
                for (id, ticket) in confirms {
                    if let Some(spool) = inner.queue.spool() {
                        // (Failed: the spool keeps the record for a replay;
                        // the queue must move on regardless.)
                        let _ = spool.wait_confirm(ticket).await;
                    }
                    inner.queue.complete(id);
                }
            });
        }
    }

    /// Adds ready writes to `jobs` up to `max`. With `batch_linger`, waits
    /// that long for more writes to fill a batch: DynamoDB's cost (and the
    /// SDK's, about as much per call as per PutItem) is mostly per call.
    async fn fill_batch(&self, jobs: &mut Vec<Job>, max: usize) {
        let deadline = tokio::time::Instant::now() + self.config.batch_linger;
        while jobs.len() < max {
            match self.next_ready(Some(deadline)).await {
                Some(job) => jobs.push(job),
                None => return,
            }
        }
    }

    /// The next write ready to send, waiting for one until `deadline`
    /// (`None`: as long as it takes).
    async fn next_ready(&self, deadline: Option<tokio::time::Instant>) -> Option<Job> {
        loop {
            // Registered before looking, so a write queued in between
            // still wakes us.
            let work = self.queue.work.notified();
            tokio::pin!(work);
            work.as_mut().enable();
            if let Some(job) = self.queue.take_ready() {
                return Some(job);
            }
            match deadline {
                None => work.await,
                Some(at) => tokio::time::timeout_at(at, work).await.ok()?,
            }
        }
    }

    /// Sends queued writes of distinct keys with BatchWriteItem until all
    /// have landed. Throttled (unprocessed) writes are sent again after a
    /// backoff; a call that fails transiently is retried whole; a call
    /// DynamoDB refuses outright falls back to one write at a time, so one
    /// bad item cannot sink the others.
    async fn send_batch(&self, jobs: &[Job]) {
        let mut pending: Vec<&Job> = jobs.iter().collect();
        let mut retry = Retry::default();
        while !pending.is_empty() {
            let writes: Vec<(&str, Option<&Item>)> = pending
                .iter()
                .map(|job| {
                    let item = match &job.op {
                        QueuedOp::Put(item) => Some(item),
                        QueuedOp::Delete => None,
                    };
                    (job.id.as_str(), item)
                })
                .collect();
            let outcome = match &self.direct {
                Some(direct) => direct.batch_write(&writes).await,
                None => self.table.batch_write(&writes).await,
            };
            let retry_reason = match outcome {
                Ok(unprocessed) => {
                    let landed = pending.len() - unprocessed.len();
                    self.counters.written.add(landed as u64);
                    self.counters.batches.incr();
                    if unprocessed.is_empty() {
                        return;
                    }
                    pending.retain(|job| unprocessed.contains(&job.id));
                    format!("{} writes unprocessed (throttled)", pending.len())
                }
                Err(DdbError::Transient(message)) => message,
                Err(_) => {
                    // Validation: find the culprit one write at a time.
                    for job in pending {
                        self.send_queued(job).await;
                    }
                    return;
                }
            };
            self.counters.retried.add(pending.len() as u64);
            if retry.failed() {
                tracing::warn!(
                    table = %self.config.table,
                    writes = pending.len(),
                    attempts = retry.attempts,
                    error = %retry_reason,
                    "write-behind batch write failed; retrying"
                );
            }
            retry.pause(&self.draining).await;
        }
    }

    /// Sends one queued write until it lands, is superseded, or fails
    /// permanently. Transient failures are retried indefinitely: the write
    /// was acknowledged.
    async fn send_queued(&self, job: &Job) {
        let mut retry = Retry::default();
        loop {
            let item = match &job.op {
                QueuedOp::Put(item) => Some(item),
                QueuedOp::Delete => None,
            };
            let result = match &self.direct {
                Some(direct) => direct.write(&job.id, item, job.version).await,
                None => {
                    let cond = Cond::VersionAtMost(job.version);
                    match item {
                        Some(item) => self.table.put(&job.id, item, cond).await,
                        None => self.table.delete(&job.id, cond).await.map(|_| ()),
                    }
                }
            };
            match result {
                Ok(()) => {
                    self.counters.written.incr();
                    return;
                }
                Err(DdbError::Condition(_)) => {
                    self.counters.superseded.incr();
                    return;
                }
                Err(e @ (DdbError::Permanent(_) | DdbError::TooLarge)) => {
                    self.counters.failed.incr();
                    tracing::error!(
                        table = %self.config.table,
                        key = %job.id,
                        error = %e.describe(),
                        "write-behind write failed permanently; dropped"
                    );
                    return;
                }
                Err(DdbError::Transient(message)) => {
                    self.counters.retried.incr();
                    if retry.failed() {
                        tracing::warn!(
                            table = %self.config.table,
                            key = %job.id,
                            attempts = retry.attempts,
                            error = %message,
                            "write-behind write failed; retrying"
                        );
                    }
                    retry.pause(&self.draining).await;
                }
            }
        }
    }
}

/// Pacing of the endless retries of an acknowledged write: exponential
/// backoff with jitter, and a warning on the first failure and every 20th.
struct Retry {
    backoff: Duration,
    attempts: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            backoff: RETRY_BACKOFF_MIN,
            attempts: 0,
        }
    }
}

impl Retry {
    /// Counts a failed attempt; true when this one should be logged.
    fn failed(&mut self) -> bool {
        self.attempts += 1;
        self.attempts == 1 || self.attempts.is_multiple_of(20)
    }

    /// Sleeps before the next attempt, waiting longer each time; cut
    /// short when shutdown starts draining, and at most
    /// [`DRAIN_BACKOFF_MAX`] while it drains.
    async fn pause(&mut self, draining: &Draining) {
        if draining.started() {
            self.backoff = self.backoff.min(DRAIN_BACKOFF_MAX);
        }
        let jitter = jitter_ms(self.backoff.as_millis() as u64 / 4 + 1);
        let woken = draining.wake.notified();
        // Registered before the check, so a drain starting in between is
        // not missed.
        tokio::pin!(woken);
        woken.as_mut().enable();
        if !draining.started() {
            tokio::select! {
                _ = tokio::time::sleep(self.backoff + Duration::from_millis(jitter)) => {}
                _ = woken => {}
            }
        } else {
            tokio::time::sleep(self.backoff + Duration::from_millis(jitter)).await;
        }
        self.backoff = (self.backoff * 2).min(RETRY_BACKOFF_MAX);
    }
}

/// A cheap pseudo-random number below `max` (for retry jitter).
fn jitter_ms(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos.wrapping_mul(2_654_435_761)) % max.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("http://127.0.0.1:8000"));
        assert!(is_loopback("http://localhost:8000/"));
        assert!(is_loopback("http://[::1]:8000"));
        assert!(!is_loopback("https://dynamodb.eu-west-1.amazonaws.com"));
    }

    #[test]
    fn config_validation() {
        assert!(validate(&DynamoConfig::default()).is_ok());
        let dup = DynamoConfig {
            cas_attr: "id".into(),
            ..DynamoConfig::default()
        };
        assert!(validate(&dup).is_err());
        let spool = |write_mode, fsync| DynamoConfig {
            write_mode,
            spool: Some(SpoolConfig {
                fsync,
                ..SpoolConfig::new("/tmp/spool")
            }),
            ..DynamoConfig::default()
        };
        assert!(validate(&spool(WriteMode::Behind, FsyncPolicy::Never)).is_ok());
        let err = validate(&spool(WriteMode::Through, FsyncPolicy::Always)).unwrap_err();
        assert!(err.to_string().contains("spool needs write"), "{err}");
        let zero = spool(WriteMode::Behind, FsyncPolicy::Interval(Duration::ZERO));
        assert!(validate(&zero).is_err());
    }
}
