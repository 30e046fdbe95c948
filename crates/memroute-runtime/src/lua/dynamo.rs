//! `mcp.dynamo_pool{...}`: a pool backed by a DynamoDB table.
//!
//! The table's store is shared by every worker and kept across reloads
//! (see [`crate::store`]), so its write-behind queue orders every write of a
//! key, whichever worker took it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use memroute_dynamo::{
    BehindWriter, DynamoConfig, DynamoStore, FsyncPolicy, PhpSessionFormat, SpoolConfig, WriteMode,
    MIN_SPOOL_MAX_BYTES,
};
use memroute_proto::{Request, Response};
use mlua::{Table, Value};

use super::config::{PoolDef, PoolHandle, PoolKind};
use crate::store::{self, ScanPage, SharedStore, StoredItem};

/// The `SharedStore` face of a DynamoDB table.
struct DynamoPool {
    name: String,
    store: Arc<DynamoStore>,
}

impl SharedStore for DynamoPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn execute<'a>(&'a self, request: &'a Request) -> Pin<Box<dyn Future<Output = Response> + 'a>> {
        Box::pin(self.store.execute(request))
    }

    fn stats(&self) -> Vec<(String, u64)> {
        self.store
            .stats()
            .fields()
            .iter()
            .map(|(name, value)| (name.to_string(), *value))
            .collect()
    }

    fn scan_page(
        &self,
        start: Option<String>,
        limit: i32,
    ) -> Pin<Box<dyn Future<Output = Result<ScanPage, String>> + '_>> {
        Box::pin(async move {
            let (items, next) = self
                .store
                .scan_page(start, limit)
                .await
                .map_err(|e| e.to_string())?;
            let items = items
                .into_iter()
                .map(|(key, item)| StoredItem {
                    key,
                    value: item.value,
                    flags: item.flags,
                    expires: item.expires,
                })
                .collect();
            Ok((items, next))
        })
    }

    fn drain(&self, timeout: Duration) -> String {
        let report = self.store.drain_blocking(timeout);
        if report.drained {
            format!(
                "write-behind queue drained ({} writes failed over its life)",
                report.failed
            )
        } else if let (true, Some(dir)) = (report.spooled, self.store.spool_dir()) {
            format!(
                "write-behind queue NOT drained within {timeout:?}: {} keys ({} bytes) of \
                 acknowledged writes are kept in the spool {} and replayed at the next start",
                report.remaining_keys,
                report.remaining_bytes,
                dir.display()
            )
        } else {
            format!(
                "write-behind queue NOT drained within {timeout:?}: {} keys ({} bytes) of \
                 acknowledged writes were not stored",
                report.remaining_keys, report.remaining_bytes
            )
        }
    }
}

fn text(value: Value, option: &str) -> mlua::Result<String> {
    match value {
        Value::String(s) => Ok(s.to_str()?.to_string()),
        _ => Err(mlua::Error::runtime(format!(
            "mcp.dynamo_pool: {option} must be a string"
        ))),
    }
}

/// A string option that must be one of `choices` (its spelling, its value).
fn choice<T: Copy>(value: Value, option: &str, choices: &[(&str, T)]) -> mlua::Result<T> {
    let given = text(value, option)?;
    if let Some((_, v)) = choices.iter().find(|(name, _)| *name == given) {
        return Ok(*v);
    }
    let names: Vec<String> = choices
        .iter()
        .map(|(name, _)| format!("\"{name}\""))
        .collect();
    Err(mlua::Error::runtime(format!(
        "mcp.dynamo_pool: {option} must be {}, not {given:?}",
        names.join(" or ")
    )))
}

/// Options that shape the PHP session format (refused without it).
const SESSION_OPTIONS: [&str; 4] = [
    "session_name",
    "session_prefix",
    "data_type",
    "session_lifetime",
];

fn boolean(value: Value, option: &str) -> mlua::Result<bool> {
    match value {
        Value::Boolean(b) => Ok(b),
        _ => Err(mlua::Error::runtime(format!(
            "mcp.dynamo_pool: {option} must be true or false"
        ))),
    }
}

fn count(value: Value, option: &str) -> mlua::Result<u64> {
    match value {
        Value::Integer(i) if i > 0 => Ok(i as u64),
        _ => Err(mlua::Error::runtime(format!(
            "mcp.dynamo_pool: {option} must be a positive integer"
        ))),
    }
}

fn seconds(value: Value, option: &str) -> mlua::Result<Duration> {
    let secs = match value {
        Value::Integer(i) => i as f64,
        Value::Number(n) => n,
        _ => -1.0,
    };
    if !(0.0..=3600.0).contains(&secs) {
        return Err(mlua::Error::runtime(format!(
            "mcp.dynamo_pool: {option} must be a number of seconds (0..3600)"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `spool_fsync`: "always", "never", or a number of milliseconds between
/// syncs (1..60000).
fn fsync_policy(value: Value) -> mlua::Result<FsyncPolicy> {
    let ms = match value {
        Value::String(s) => match s.to_str()?.as_ref() {
            "always" => return Ok(FsyncPolicy::Always),
            "never" => return Ok(FsyncPolicy::Never),
            _ => -1.0,
        },
        Value::Integer(i) => i as f64,
        Value::Number(n) => n,
        _ => -1.0,
    };
    if !(1.0..=60_000.0).contains(&ms) {
        return Err(mlua::Error::runtime(
            "mcp.dynamo_pool: spool_fsync must be \"always\", \"never\" or a number of \
             milliseconds between syncs (1..60000)",
        ));
    }
    Ok(FsyncPolicy::Interval(Duration::from_secs_f64(ms / 1000.0)))
}

/// Options that shape the spool (refused without it).
const SPOOL_OPTIONS: [&str; 2] = ["spool_fsync", "spool_max_bytes"];

/// `mcp.dynamo_pool{table=, region=, endpoint=, key_attr=, value_attr=,
/// flags_attr=, expires_attr=, cas_attr=, consistent_read=, write=,
/// batch_writes=, writer=, queue_max_keys=, queue_max_bytes=, backpressure_timeout=,
/// batch_linger=, max_attempts=, timeout=, create_table=, name=, format=, session_name=,
/// session_prefix=, data_type=, session_lifetime=, spool=, spool_fsync=, spool_max_bytes=}`.
pub fn dynamo_pool(lua: &mlua::Lua, opts: Table) -> mlua::Result<PoolHandle> {
    let mut config = DynamoConfig::default();
    let mut name = None;
    // The PHP session format: chosen by `format`, shaped by
    // SESSION_OPTIONS.
    let mut php_session = false;
    let mut session = PhpSessionFormat::default();
    let mut session_option = None;
    let mut value_attr_given = false;
    let mut linger_given = false;
    let mut writer_given = false;
    let mut spool: Option<SpoolConfig> = None;
    let mut spool_fsync = None;
    let mut spool_max_bytes = None;
    let mut spool_option = None;
    for pair in opts.pairs::<String, Value>() {
        let (key, value) = pair?;
        if SESSION_OPTIONS.contains(&key.as_str()) && session_option.is_none() {
            session_option = Some(key.clone());
        }
        if SPOOL_OPTIONS.contains(&key.as_str()) && spool_option.is_none() {
            spool_option = Some(key.clone());
        }
        match key.as_str() {
            "table" => config.table = text(value, &key)?,
            "region" => config.region = Some(text(value, &key)?),
            "endpoint" => config.endpoint = Some(text(value, &key)?),
            "key_attr" => config.key_attr = text(value, &key)?,
            "value_attr" => {
                config.value_attr = text(value, &key)?;
                value_attr_given = true;
            }
            "flags_attr" => config.flags_attr = text(value, &key)?,
            "expires_attr" => config.expires_attr = text(value, &key)?,
            "cas_attr" => config.cas_attr = text(value, &key)?,
            "consistent_read" => config.consistent_read = boolean(value, &key)?,
            "create_table" => config.create_table = boolean(value, &key)?,
            "batch_writes" => config.batch_writes = boolean(value, &key)?,
            "batch_linger" => {
                let linger = seconds(value, &key)?;
                if linger > Duration::from_secs(1) {
                    return Err(mlua::Error::runtime(
                        "mcp.dynamo_pool: batch_linger must be at most 1 second",
                    ));
                }
                config.batch_linger = linger;
                linger_given = true;
            }
            "write" => {
                config.write_mode = choice(
                    value,
                    &key,
                    &[
                        ("through", WriteMode::Through),
                        ("behind", WriteMode::Behind),
                    ],
                )?
            }
            "writer" => {
                config.writer = choice(
                    value,
                    &key,
                    &[("direct", BehindWriter::Direct), ("sdk", BehindWriter::Sdk)],
                )?;
                writer_given = true;
            }
            "queue_max_keys" => config.queue_max_keys = count(value, &key)? as usize,
            "queue_max_bytes" => config.queue_max_bytes = count(value, &key)? as usize,
            "backpressure_timeout" => config.backpressure_timeout = seconds(value, &key)?,
            "max_attempts" => config.max_attempts = count(value, &key)?.min(100) as u32,
            "timeout" => config.operation_timeout = Some(seconds(value, &key)?),
            "name" => name = Some(text(value, &key)?),
            "format" => {
                php_session = choice(value, &key, &[("memcached", false), ("php_session", true)])?
            }
            "session_name" => session.session_name = text(value, &key)?,
            "session_prefix" => session.key_prefix = text(value, &key)?,
            "data_type" => {
                session.binary_data = choice(value, &key, &[("string", false), ("binary", true)])?
            }
            // Sessions: `expires` for data stored with exptime 0
            // (CGI::Session's writes), as the SDK's session_lifetime.
            "session_lifetime" => {
                let secs = u32::try_from(count(value, &key)?).map_err(|_| {
                    mlua::Error::runtime("mcp.dynamo_pool: session_lifetime is too large")
                })?;
                session.lifetime = Some(secs);
            }
            "spool" => {
                let dir = text(value, &key)?;
                if dir.is_empty() {
                    return Err(mlua::Error::runtime(
                        "mcp.dynamo_pool: spool must name a directory",
                    ));
                }
                spool = Some(SpoolConfig::new(dir));
            }
            "spool_fsync" => spool_fsync = Some(fsync_policy(value)?),
            "spool_max_bytes" => {
                let max = count(value, &key)?;
                if max < MIN_SPOOL_MAX_BYTES {
                    return Err(mlua::Error::runtime(format!(
                        "mcp.dynamo_pool: spool_max_bytes must be at least {MIN_SPOOL_MAX_BYTES} \
                         (1 MiB)"
                    )));
                }
                spool_max_bytes = Some(max);
            }
            other => {
                return Err(mlua::Error::runtime(format!(
                    "mcp.dynamo_pool: unknown option '{other}'"
                )))
            }
        }
    }
    if config.table.is_empty() {
        return Err(mlua::Error::runtime("mcp.dynamo_pool: table is required"));
    }
    if linger_given && !config.batch_writes {
        return Err(mlua::Error::runtime(
            "mcp.dynamo_pool: batch_linger needs batch_writes = true",
        ));
    }
    if writer_given && config.write_mode != WriteMode::Behind {
        // Write-through always goes through the SDK: a writer chosen for it
        // would be ignored.
        return Err(mlua::Error::runtime(
            "mcp.dynamo_pool: writer needs write = \"behind\" (write-through calls \
             always go through the AWS SDK)",
        ));
    }
    match spool {
        Some(mut sc) => {
            if config.write_mode != WriteMode::Behind {
                return Err(mlua::Error::runtime(
                    "mcp.dynamo_pool: spool needs write = \"behind\" (write-through \
                     acknowledges only what DynamoDB has)",
                ));
            }
            if let Some(fsync) = spool_fsync {
                sc.fsync = fsync;
            }
            if let Some(max) = spool_max_bytes {
                sc.max_bytes = max;
            }
            config.spool = Some(sc);
        }
        None => {
            if let Some(option) = spool_option {
                return Err(mlua::Error::runtime(format!(
                    "mcp.dynamo_pool: {option} needs spool = \"/a/directory\""
                )));
            }
        }
    }
    if php_session {
        if !value_attr_given {
            // The AWS SDK for PHP's name for the session data.
            config.value_attr = "data".into();
        }
        config.php_session = Some(session);
    } else if let Some(option) = session_option {
        return Err(mlua::Error::runtime(format!(
            "mcp.dynamo_pool: {option} needs format = \"php_session\""
        )));
    }
    let name = name.unwrap_or_else(|| format!("dynamo_{}", config.table));
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(mlua::Error::runtime(
            "mcp.dynamo_pool: name must be one word (it prefixes stats)",
        ));
    }
    let identity = format!("{name} {config:?}");
    let stores = lua
        .app_data_ref::<Arc<store::StoreRegistry>>()
        .ok_or_else(|| mlua::Error::runtime("mcp.dynamo_pool: no store registry"))?
        .clone();
    let shared = stores.get_or_create(&identity, || {
        let store = DynamoStore::new(config.clone())
            .map_err(|e| mlua::Error::runtime(format!("mcp.dynamo_pool: {e}")))?;
        Ok::<Arc<dyn SharedStore>, mlua::Error>(Arc::new(DynamoPool {
            name: name.clone(),
            store,
        }))
    })?;
    Ok(PoolHandle(Arc::new(PoolDef {
        name,
        kind: PoolKind::Shared(shared),
    })))
}
