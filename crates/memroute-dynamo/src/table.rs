//! The DynamoDB calls, typed in memcached terms.
//!
//! Every call here runs on the store's own runtime. Errors are classified
//! once ([`DdbError`]) so callers can tell a failed condition from a
//! throttled request from a request that can never succeed.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, KeySchemaElement, KeyType,
    KeysAndAttributes, PutRequest, ReturnValue, ReturnValuesOnConditionCheckFailure,
    ScalarAttributeType, TableStatus, WriteRequest,
};
use aws_sdk_dynamodb::Client;

use crate::item::{Item, Names};

/// An item's attributes as DynamoDB returns them.
pub type Attrs = HashMap<String, AttributeValue>;

/// What a conditional DeleteItem did, with the item as it was.
enum Deleted {
    Removed(Option<Attrs>),
    Refused(Option<Attrs>),
}

/// Most keys in one BatchGetItem call.
pub const BATCH_GET_MAX: usize = 100;

/// Most writes in one BatchWriteItem call.
pub const BATCH_WRITE_MAX: usize = 25;

/// How often BatchGetItem's UnprocessedKeys are asked for again before the
/// read fails.
const UNPROCESSED_ROUNDS: u32 = 10;

/// A failed DynamoDB call.
#[derive(Debug, Clone)]
pub enum DdbError {
    /// The condition did not hold; carries the item as it was, when
    /// DynamoDB returned it (`ReturnValuesOnConditionCheckFailure`).
    Condition(Option<Box<Item>>),
    /// DynamoDB refused the item as too large.
    TooLarge,
    /// A request that can never succeed (validation, serialization).
    Permanent(String),
    /// Throttling, service errors, timeouts, connection failures: worth
    /// retrying later.
    Transient(String),
}

impl DdbError {
    pub fn describe(&self) -> String {
        match self {
            DdbError::Condition(_) => "conditional check failed".into(),
            DdbError::TooLarge => "item too large".into(),
            DdbError::Permanent(m) | DdbError::Transient(m) => m.clone(),
        }
    }
}

fn classify<E>(err: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>) -> DdbError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = format!("{}", DisplayErrorContext(err));
    if let SdkError::ServiceError(_) = err {
        let code = err.code().unwrap_or("");
        let message = err.message().unwrap_or("");
        return match code {
            "ConditionalCheckFailedException" => DdbError::Condition(None),
            "ValidationException" if message.to_ascii_lowercase().contains("size") => {
                DdbError::TooLarge
            }
            "ValidationException" | "SerializationException" => DdbError::Permanent(text),
            _ => DdbError::Transient(text),
        };
    }
    DdbError::Transient(text)
}

/// What a write requires of the stored item.
#[derive(Debug, Clone, Copy)]
pub enum Cond {
    /// Nothing.
    None,
    /// No version, or a version not above `v` (ordered blind writes).
    VersionAtMost(u64),
    /// No live item (`add`).
    NotLive { now: i64 },
    /// A live item (`replace`).
    Live { now: i64 },
    /// A live item whose version is `cas` (`cas`).
    LiveCas { now: i64, cas: u64 },
    /// The item is exactly as read (read-modify-write): absent, present
    /// without a version, or present with this version.
    Unchanged(Option<Option<u64>>),
}

/// A condition expression with its names and values (the names and values
/// also serve the update expression sent beside it).
#[derive(Default)]
pub(crate) struct Expr {
    pub(crate) text: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    pub(crate) fn name(&mut self, placeholder: &str, attr: &str) -> &mut Self {
        self.names.insert(placeholder.to_owned(), attr.to_owned());
        self
    }
    pub(crate) fn num(&mut self, placeholder: &str, v: impl ToString) -> &mut Self {
        self.values
            .insert(placeholder.to_owned(), AttributeValue::N(v.to_string()));
        self
    }
    pub(crate) fn value(&mut self, placeholder: &str, v: AttributeValue) -> &mut Self {
        self.values.insert(placeholder.to_owned(), v);
        self
    }
    /// Drops the names and values that neither the condition nor `update`
    /// uses: DynamoDB refuses a request that sends an unused one.
    fn keep_used(&mut self, update: &str) {
        let used = |placeholder: &String| {
            [self.text.as_str(), update]
                .iter()
                .any(|text| uses(text, placeholder))
        };
        let names: Vec<String> = self.names.keys().filter(|p| !used(p)).cloned().collect();
        let values: Vec<String> = self.values.keys().filter(|p| !used(p)).cloned().collect();
        for p in names {
            self.names.remove(&p);
        }
        for p in values {
            self.values.remove(&p);
        }
    }
    fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }
    fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
    fn text(&self) -> Option<String> {
        (!self.text.is_empty()).then(|| self.text.clone())
    }
}

/// Whether `text` uses `placeholder` as a whole token (`#l` is not used by
/// `#lx`).
fn uses(text: &str, placeholder: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    text.match_indices(placeholder).any(|(at, _)| {
        text.as_bytes()
            .get(at + placeholder.len())
            .is_none_or(|&b| !word(b))
    })
}

const LIVE: &str = "attribute_exists(#k) AND (attribute_not_exists(#e) OR #e = :zero OR #e > :now)";

fn condition(names: &Names, cond: Cond) -> Expr {
    let mut e = Expr::default();
    match cond {
        Cond::None => {}
        Cond::VersionAtMost(v) => {
            e.text = "attribute_not_exists(#c) OR #c <= :v".into();
            e.name("#c", &names.cas).num(":v", v);
        }
        Cond::NotLive { now } => {
            e.text = "attribute_not_exists(#k) OR (#e > :zero AND #e <= :now)".into();
            e.name("#k", &names.key)
                .name("#e", &names.expires)
                .num(":zero", 0)
                .num(":now", now);
        }
        Cond::Live { now } => {
            e.text = LIVE.into();
            e.name("#k", &names.key)
                .name("#e", &names.expires)
                .num(":zero", 0)
                .num(":now", now);
        }
        Cond::LiveCas { now, cas } => {
            e.text = format!("{LIVE} AND #c = :cas");
            e.name("#k", &names.key)
                .name("#e", &names.expires)
                .name("#c", &names.cas)
                .num(":zero", 0)
                .num(":now", now)
                .num(":cas", cas);
        }
        Cond::Unchanged(None) => {
            e.text = "attribute_not_exists(#k)".into();
            e.name("#k", &names.key);
        }
        Cond::Unchanged(Some(None)) => {
            e.text = "attribute_exists(#k) AND (attribute_not_exists(#c) OR #c = :zero)".into();
            e.name("#k", &names.key)
                .name("#c", &names.cas)
                .num(":zero", 0);
        }
        Cond::Unchanged(Some(Some(v))) => {
            e.text = "#c = :old".into();
            e.name("#c", &names.cas).num(":old", v);
        }
    }
    e
}

/// One table and the client that reaches it.
#[derive(Clone)]
pub struct Table {
    client: Client,
    name: String,
    names: Names,
    consistent_read: bool,
}

impl Table {
    pub fn new(client: Client, name: String, names: Names, consistent_read: bool) -> Self {
        Table {
            client,
            name,
            names,
            consistent_read,
        }
    }

    fn key(&self, id: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([(self.names.key.clone(), AttributeValue::S(id.to_owned()))])
    }

    /// GetItem. `consistent` overrides the configured read consistency
    /// (read-modify-write always reads consistently).
    pub async fn get(&self, id: &str, consistent: bool) -> Result<Option<Item>, DdbError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.name)
            .set_key(Some(self.key(id)))
            .consistent_read(consistent || self.consistent_read)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out.item().map(|attrs| self.names.read_item(attrs)))
    }

    /// BatchGetItem for up to [`BATCH_GET_MAX`] distinct ids; retries
    /// UnprocessedKeys with backoff. Returns the items found, by id.
    pub async fn batch_get(&self, ids: &[String]) -> Result<HashMap<String, Item>, DdbError> {
        let mut found = HashMap::with_capacity(ids.len());
        let mut keys: Vec<HashMap<String, AttributeValue>> =
            ids.iter().map(|id| self.key(id)).collect();
        let mut backoff = Duration::from_millis(20);
        for round in 0..=UNPROCESSED_ROUNDS {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut keys)))
                .consistent_read(self.consistent_read)
                .build()
                .map_err(|e| DdbError::Permanent(e.to_string()))?;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.name, request)
                .send()
                .await
                .map_err(|e| classify(&e))?;
            if let Some(items) = out.responses().and_then(|r| r.get(&self.name)) {
                for attrs in items {
                    if let Some(AttributeValue::S(id)) = attrs.get(&self.names.key) {
                        found.insert(id.clone(), self.names.read_item(attrs));
                    }
                }
            }
            keys = out
                .unprocessed_keys()
                .and_then(|u| u.get(&self.name))
                .map(|k| k.keys().to_vec())
                .unwrap_or_default();
            if keys.is_empty() {
                return Ok(found);
            }
            if round < UNPROCESSED_ROUNDS {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        Err(DdbError::Transient(format!(
            "BatchGetItem left {} keys unprocessed",
            keys.len()
        )))
    }

    /// PutItem under `cond`. On a failed condition the error carries the
    /// stored item when DynamoDB returns it.
    pub async fn put(&self, id: &str, item: &Item, cond: Cond) -> Result<(), DdbError> {
        let expr = condition(&self.names, cond);
        let result = self
            .client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(self.names.item_attrs(id, item)))
            .set_condition_expression(expr.text())
            .set_expression_attribute_names(expr.names())
            .set_expression_attribute_values(expr.values())
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => {
                if let Some(PutItemError::ConditionalCheckFailedException(ccf)) =
                    err.as_service_error()
                {
                    let old = ccf.item().map(|a| Box::new(self.names.read_item(a)));
                    return Err(DdbError::Condition(old));
                }
                Err(classify(&err))
            }
        }
    }

    /// One BatchWriteItem call with unconditional puts (`Some(item)`) and
    /// deletes (`None`) of distinct keys, at most [`BATCH_WRITE_MAX`].
    /// Returns the ids DynamoDB left unprocessed (throttled), to be sent
    /// again; an error means none of the writes was applied.
    pub async fn batch_write(
        &self,
        writes: &[(&str, Option<&Item>)],
    ) -> Result<Vec<String>, DdbError> {
        let mut requests = Vec::with_capacity(writes.len());
        for (id, item) in writes {
            let request = match item {
                Some(item) => WriteRequest::builder().put_request(
                    PutRequest::builder()
                        .set_item(Some(self.names.item_attrs(id, item)))
                        .build()
                        .map_err(|e| DdbError::Permanent(e.to_string()))?,
                ),
                None => WriteRequest::builder().delete_request(
                    DeleteRequest::builder()
                        .set_key(Some(self.key(id)))
                        .build()
                        .map_err(|e| DdbError::Permanent(e.to_string()))?,
                ),
            };
            requests.push(request.build());
        }
        let out = self
            .client
            .batch_write_item()
            .request_items(&self.name, requests)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let mut unprocessed = Vec::new();
        for request in out
            .unprocessed_items()
            .and_then(|u| u.get(&self.name))
            .into_iter()
            .flatten()
        {
            let key = request
                .put_request()
                .map(|p| p.item())
                .or_else(|| request.delete_request().map(|d| d.key()));
            if let Some(id) = key.and_then(|k| k.get(self.names.key.as_str())) {
                if let Ok(id) = id.as_s() {
                    unprocessed.push(id.clone());
                }
            }
        }
        Ok(unprocessed)
    }

    /// DeleteItem under `cond`; returns the item it removed, if any.
    pub async fn delete(&self, id: &str, cond: Cond) -> Result<Option<Item>, DdbError> {
        let read = |attrs: Attrs| self.names.read_item(&attrs);
        match self.delete_expr(id, &condition(&self.names, cond)).await? {
            Deleted::Removed(old) => Ok(old.map(read)),
            Deleted::Refused(old) => Err(DdbError::Condition(old.map(|a| Box::new(read(a))))),
        }
    }

    /// DeleteItem under `expr`'s condition, with the item as it was, both
    /// when it was removed and when the condition kept it.
    async fn delete_expr(&self, id: &str, expr: &Expr) -> Result<Deleted, DdbError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.name)
            .set_key(Some(self.key(id)))
            .set_condition_expression(expr.text())
            .set_expression_attribute_names(expr.names())
            .set_expression_attribute_values(expr.values())
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Deleted::Removed(out.attributes)),
            Err(err) => match err.as_service_error() {
                Some(DeleteItemError::ConditionalCheckFailedException(ccf)) => {
                    Ok(Deleted::Refused(ccf.item.clone()))
                }
                _ => Err(classify(&err)),
            },
        }
    }

    /// Sets the expiry of a live item (removes it for 0), leaving its value,
    /// flags and CAS alone, as memcached's touch does. Returns the item as it
    /// was before the update, or `None` if there was no live item.
    pub async fn touch(&self, id: &str, expires: i64, now: i64) -> Result<Option<Item>, DdbError> {
        let mut expr = condition(&self.names, Cond::Live { now });
        let update = if expires == 0 {
            "REMOVE #e"
        } else {
            expr.num(":exp", expires);
            "SET #e = :exp"
        };
        let old = self
            .update_attrs(id, update, expr, ReturnValue::AllOld)
            .await?;
        Ok(old.map(|attrs| self.names.read_item(&attrs)))
    }

    /// GetItem returning the raw attributes, for table formats other than
    /// memcached's own (PHP sessions).
    pub async fn get_attrs(&self, id: &str) -> Result<Option<Attrs>, DdbError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.name)
            .set_key(Some(self.key(id)))
            .consistent_read(self.consistent_read)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out.item)
    }

    /// UpdateItem with the update expression `update` under `expr`'s
    /// condition (if any; `expr` may name more than both use). Returns the
    /// attributes `returns` asks for, or `None` when the condition failed.
    pub async fn update_attrs(
        &self,
        id: &str,
        update: &str,
        mut expr: Expr,
        returns: ReturnValue,
    ) -> Result<Option<Attrs>, DdbError> {
        expr.keep_used(update);
        let result = self
            .client
            .update_item()
            .table_name(&self.name)
            .set_key(Some(self.key(id)))
            .update_expression(update)
            .set_condition_expression(expr.text())
            .set_expression_attribute_names(expr.names())
            .set_expression_attribute_values(expr.values())
            .return_values(returns)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Some(out.attributes.unwrap_or_default())),
            Err(err) => {
                if let Some(UpdateItemError::ConditionalCheckFailedException(_)) =
                    err.as_service_error()
                {
                    return Ok(None);
                }
                Err(classify(&err))
            }
        }
    }

    /// DeleteItem under `expr`'s condition; whether the condition held.
    pub async fn delete_if(&self, id: &str, mut expr: Expr) -> Result<bool, DdbError> {
        expr.keep_used("");
        Ok(matches!(
            self.delete_expr(id, &expr).await?,
            Deleted::Removed(_)
        ))
    }

    /// One page of a Scan: up to `limit` items after `start` (an id from the
    /// previous page), and the id to continue from, if any.
    pub async fn scan_page(
        &self,
        start: Option<String>,
        limit: i32,
    ) -> Result<(Vec<(String, Item)>, Option<String>), DdbError> {
        let out = self
            .client
            .scan()
            .table_name(&self.name)
            .limit(limit.max(1))
            .set_exclusive_start_key(start.map(|id| self.key(&id)))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let items = out
            .items()
            .iter()
            .filter_map(|attrs| match attrs.get(&self.names.key) {
                Some(AttributeValue::S(id)) => Some((id.clone(), self.names.read_item(attrs))),
                _ => None,
            })
            .collect();
        let next = match out
            .last_evaluated_key()
            .and_then(|k| k.get(&self.names.key))
        {
            Some(AttributeValue::S(id)) => Some(id.clone()),
            _ => None,
        };
        Ok((items, next))
    }

    /// Creates the table (string hash key, on-demand billing) unless it
    /// exists, and waits until it is active.
    pub async fn create_if_missing(&self) -> Result<(), DdbError> {
        let exists = match self
            .client
            .describe_table()
            .table_name(&self.name)
            .send()
            .await
        {
            Ok(_) => true,
            Err(err) if err.code() == Some("ResourceNotFoundException") => false,
            Err(err) => return Err(classify(&err)),
        };
        if !exists {
            let key = KeySchemaElement::builder()
                .attribute_name(&self.names.key)
                .key_type(KeyType::Hash)
                .build()
                .map_err(|e| DdbError::Permanent(e.to_string()))?;
            let def = AttributeDefinition::builder()
                .attribute_name(&self.names.key)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| DdbError::Permanent(e.to_string()))?;
            let created = self
                .client
                .create_table()
                .table_name(&self.name)
                .key_schema(key)
                .attribute_definitions(def)
                .billing_mode(BillingMode::PayPerRequest)
                .send()
                .await;
            if let Err(err) = created {
                if err.code() != Some("ResourceInUseException") {
                    return Err(classify(&err));
                }
            }
        }
        for _ in 0..600 {
            let out = self
                .client
                .describe_table()
                .table_name(&self.name)
                .send()
                .await
                .map_err(|e| classify(&e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(DdbError::Transient(format!(
            "table {} did not become active",
            self.name
        )))
    }
}
