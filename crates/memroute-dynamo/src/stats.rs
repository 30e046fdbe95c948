//! Counters and the snapshot the server prints under `stats`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::spool::SpoolStats;

/// A relaxed event counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn incr(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    pub reads: Counter,
    pub read_hits: Counter,
    pub read_misses: Counter,
    pub queue_hits: Counter,
    pub sync_writes: Counter,
    pub conflicts: Counter,
    pub errors: Counter,
    pub too_large: Counter,
    pub queued: Counter,
    pub coalesced: Counter,
    pub written: Counter,
    pub batches: Counter,
    pub superseded: Counter,
    pub retried: Counter,
    pub failed: Counter,
    pub rejected: Counter,
    pub spool_rejected: Counter,
}

/// A snapshot of one store's counters and gauges. Field names are meant
/// for `stats` output (for example `dynamo_<table>_<field>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamoStats {
    /// Keys read from DynamoDB (GetItem, or one per key of BatchGetItem).
    pub reads: u64,
    /// Of those, live items found.
    pub read_hits: u64,
    /// Of those, absent or expired.
    pub read_misses: u64,
    /// Reads answered from the write-behind queue (read-your-writes).
    pub queue_hits: u64,
    /// Writes sent and waited for by the request (write-through, and the
    /// state-dependent commands in write-behind mode).
    pub sync_writes: u64,
    /// Read-modify-write rounds repeated because another writer changed
    /// the item in between.
    pub conflicts: u64,
    /// Requests answered `SERVER_ERROR backend failure`.
    pub errors: u64,
    /// Writes refused as larger than DynamoDB's 400 KB item limit.
    pub too_large: u64,
    /// Write-behind: writes accepted into the queue (acknowledged).
    pub queued: u64,
    /// Write-behind: queued writes replaced by a later write of the same
    /// key before they were sent.
    pub coalesced: u64,
    /// Write-behind: queued writes that landed in DynamoDB.
    pub written: u64,
    /// Write-behind with `batch_writes`: BatchWriteItem calls made.
    pub batches: u64,
    /// Write-behind: writes skipped because the table already held a newer
    /// version of the key (written by another process).
    pub superseded: u64,
    /// Write-behind: attempts repeated after throttling or a transient error.
    pub retried: u64,
    /// Write-behind: writes given up after a permanent error (logged with
    /// the key).
    pub failed: u64,
    /// Write-behind: writes refused (not acknowledged) because the queue
    /// stayed full for the backpressure timeout.
    pub rejected: u64,
    /// Write-behind: keys with queued writes now.
    pub queue_depth: u64,
    /// Write-behind: bytes held by queued writes now.
    pub queue_bytes: u64,
    /// Write-behind: writes being sent now.
    pub in_flight: u64,
    /// Write-behind with a spool: writes refused (not acknowledged) because
    /// the spool stayed full for the backpressure timeout.
    pub spool_rejected: u64,
    /// The spool's counters, when the store has one.
    pub spool: Option<SpoolStats>,
}

impl DynamoStats {
    /// `(name, value)` pairs in a stable order, for printing; the
    /// `spool_*` fields only for a store with a spool.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        let mut fields = vec![
            ("reads", self.reads),
            ("read_hits", self.read_hits),
            ("read_misses", self.read_misses),
            ("queue_hits", self.queue_hits),
            ("sync_writes", self.sync_writes),
            ("conflicts", self.conflicts),
            ("errors", self.errors),
            ("too_large", self.too_large),
            ("queued", self.queued),
            ("coalesced", self.coalesced),
            ("written", self.written),
            ("batches", self.batches),
            ("superseded", self.superseded),
            ("retried", self.retried),
            ("failed", self.failed),
            ("rejected", self.rejected),
            ("queue_depth", self.queue_depth),
            ("queue_bytes", self.queue_bytes),
            ("in_flight", self.in_flight),
        ];
        if let Some(s) = &self.spool {
            fields.extend([
                ("spool_records", s.records),
                ("spool_confirms", s.confirms),
                ("spool_batches", s.batches),
                ("spool_syncs", s.syncs),
                ("spool_replayed", s.replayed),
                ("spool_corrupt", s.corrupt),
                ("spool_errors", s.errors),
                ("spool_trimmed", s.trimmed),
                ("spool_rejected", self.spool_rejected),
                ("spool_bytes", s.bytes),
                ("spool_segments", s.segments),
            ]);
        }
        fields
    }
}

impl Counters {
    pub fn snapshot(&self, depth: (usize, usize, usize)) -> DynamoStats {
        DynamoStats {
            reads: self.reads.get(),
            read_hits: self.read_hits.get(),
            read_misses: self.read_misses.get(),
            queue_hits: self.queue_hits.get(),
            sync_writes: self.sync_writes.get(),
            conflicts: self.conflicts.get(),
            errors: self.errors.get(),
            too_large: self.too_large.get(),
            queued: self.queued.get(),
            coalesced: self.coalesced.get(),
            written: self.written.get(),
            batches: self.batches.get(),
            superseded: self.superseded.get(),
            retried: self.retried.get(),
            failed: self.failed.get(),
            rejected: self.rejected.get(),
            queue_depth: depth.0 as u64,
            queue_bytes: depth.1 as u64,
            in_flight: depth.2 as u64,
            spool_rejected: self.spool_rejected.get(),
            spool: None,
        }
    }
}
