//! The RocksDB store: the region's durable state, by column family.
//!
//! The core emits records; [`Store::batch`] turns each into puts and deletes of *state* (not
//! a log). [`Store::load`] reads back only live state (events, rows, sold seats, live holds,
//! counters) as the restore records `Core::recover` takes, so restart time and the restarted
//! node's memory follow live state, not history. Orders and idempotency answers stay on disk
//! and are read on demand: [`Store::lookup`] answers the core's reads (point reads through
//! bloom filters), [`Store::orders_after`] pages the operator's list. One `WriteBatch` per
//! group of records is written with `sync = true`: everything a reply depends on is in the
//! synced WAL first.
//!
//! RocksDB's own memory is bounded (see [`StoreOptions`] and docs/operations.md): one block
//! cache shared by every column family, holding index and filter blocks too, and a write
//! buffer manager capping every memtable together.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use allot_crdt::{Entry, Genesis, PoolIdx, RowDelta, SeatIdx};
use allot_node::{
    Found, Hold, HoldNo, Lookup, Millis, OrderNo, OrderStatus, Outcome, Record, RecordBody,
    RecordIndex, StoredKey, StoredOrder,
};
use anyhow::Context;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, CompactionDecision,
    Direction, Env, IteratorMode, Options, ReadOptions, ReadTier, WriteBatch, WriteBufferManager,
    WriteOptions, DB,
};
use sha2::{Digest, Sha256};

const EVENTS: &str = "events";
const META: &str = "meta";
const ROWS: &str = "rows";
const HOLDS: &str = "holds";
const ORDERS: &str = "orders";
/// Hold number → the order that confirmed it.
const HOLD_ORDERS: &str = "hold-orders";
/// (event, order number) → nothing: the operator's list of one event's orders.
const EVENT_ORDERS: &str = "event-orders";
/// (event, pool, seat) → the order holding the sold seat.
const SEATS: &str = "seats";
const KEYS: &str = "idempotency";
const NODE: &str = "node";

/// The column families read by scans or whole at start.
const PLAIN_FAMILIES: [&str; 7] = [EVENTS, META, ROWS, HOLDS, NODE, EVENT_ORDERS, SEATS];
/// The column families read by point lookups (bloom filters); `KEYS` is one too, with its
/// own expiry filter.
const POINT_READ_FAMILIES: [&str; 2] = [ORDERS, HOLD_ORDERS];

/// Row keys and values of one batch, last write wins.
type Rows = BTreeMap<Vec<u8>, Vec<u8>>;

/// The numbers the next hold and order take, as one batch leaves them.
#[derive(Default)]
struct Counters {
    next_hold: Option<HoldNo>,
    next_order: Option<OrderNo>,
}

/// The layout of the column families. Version 2: orders with their record index, the order of
/// each confirmed hold, sold seats, order and record counters (read on demand, restarts from
/// live state). Version 3: an idempotency answer that is an order names it instead of holding
/// a copy ([`KeyOnDisk`]). Data of another layout is refused at open, never read as if it were
/// this one.
const FORMAT: u64 = 3;

/// An idempotency answer as the keys family holds it, after the 8 bytes of the time it was
/// made (which the expiry filter reads without decoding anything).
///
/// An answer that is an order names the order and the status it had when answered: the order
/// itself is in the orders family, written in the same batch, and only its status ever changes
/// (a refund). A copy would write every keyed sale's order twice, to the WAL and again at each
/// flush and compaction of the keys family, whose random keys compact it all over again.
/// Replays are rare; they pay one more point read.
///
/// Written with `O = &Outcome` (no copy of the answer), read back with `O = Outcome`.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyOnDisk<O> {
    index: RecordIndex,
    body_hash: [u8; 32],
    answer: AnswerOnDisk<O>,
}

/// The keys family's value: the time the answer was made, then the answer ([`KeyOnDisk`]).
fn key_value(at: Millis, index: RecordIndex, body_hash: [u8; 32], outcome: &Outcome) -> Vec<u8> {
    let mut v = at.to_be_bytes().to_vec();
    v.extend(enc(&KeyOnDisk {
        index,
        body_hash,
        answer: AnswerOnDisk::of(outcome),
    }));
    v
}

/// Part of the stored format: its variants' order is their number on disk.
#[derive(serde::Serialize, serde::Deserialize)]
enum AnswerOnDisk<O> {
    Order { n: OrderNo, status: OrderStatus },
    Other(O),
}

impl<'a> AnswerOnDisk<&'a Outcome> {
    fn of(outcome: &'a Outcome) -> Self {
        match outcome {
            Outcome::Order(o) => AnswerOnDisk::Order {
                n: o.n,
                status: o.status.clone(),
            },
            other => AnswerOnDisk::Other(other),
        }
    }
}

/// How long an idempotency key is kept by default: 24 h.
pub const DEFAULT_KEY_TTL_MS: u64 = 24 * 3600 * 1000;

/// RocksDB's memory, bounded. The defaults suit one region of a ticketing cluster on a small
/// machine: 64 MiB of block cache and 32 MiB of memtables, a bound of about 120 MiB with the
/// allocator's slack while flushes keep up (the memtable budget triggers flushes and does not
/// stall writes: see [`Store::open`]).
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Idempotency answers older than this are not found, and compaction drops them.
    pub key_ttl_ms: Millis,
    /// The block cache every column family shares; index and filter blocks live in it too.
    pub block_cache_bytes: usize,
    /// Every memtable of every column family together (a write buffer manager).
    pub memtable_bytes: usize,
    /// Write flushed and compacted tables around the page cache when the file system takes
    /// direct writes (see [`Store::open`]); false: always through it.
    pub direct_writes: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            key_ttl_ms: DEFAULT_KEY_TTL_MS,
            block_cache_bytes: 64 << 20,
            memtable_bytes: 32 << 20,
            direct_writes: false,
        }
    }
}

/// What RocksDB reports of its own memory, in bytes.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StoreMemory {
    pub block_cache: u64,
    pub memtables: u64,
    pub table_readers: u64,
}

impl StoreMemory {
    pub fn total(&self) -> u64 {
        self.block_cache + self.memtables + self.table_readers
    }
}

pub struct Store {
    db: DB,
    key_ttl_ms: Millis,
    /// Reads from memtables and block cache only, made once: a new key is read this way on
    /// every keyed request, before the core's lock is taken (or under it, if that read could
    /// not be used).
    memory_only: ReadOptions,
    /// Whether flushes and compactions write around the page cache (see [`Store::open`]).
    direct_writes: bool,
    /// Reads the memtables and block cache could not answer.
    disk_reads: AtomicU64,
}

/// Whether the file system under `dir` takes direct (`O_DIRECT`) writes, tried with one
/// aligned block; the error says why not. Some refuse them (tmpfs before Linux 6.6, some
/// overlay and network file systems), and RocksDB set to write its tables that way would fail
/// its first flush and stop taking writes: the node would stop acknowledging sales.
fn takes_direct_writes(dir: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        /// One block, aligned as direct writes require (4 KiB covers 512-byte sectors too).
        #[repr(C, align(4096))]
        struct Block([u8; 4096]);
        let probe = dir.join("DIRECT-WRITE-PROBE");
        let tried = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .and_then(|mut f| {
                f.write_all(&Box::new(Block([0; 4096])).0)?;
                f.sync_data()
            });
        let _ = std::fs::remove_file(&probe);
        tried
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        Err(std::io::Error::other(
            "direct writes are tried on Linux only",
        ))
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("state always encodes")
}

fn row_prefix(event: &str, writer: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(event.len() + 3);
    k.extend_from_slice(event.as_bytes());
    k.push(0);
    k.extend_from_slice(&writer.to_be_bytes());
    k
}

/// The time an idempotency value was made: its first 8 bytes.
fn key_time(value: &[u8]) -> Option<Millis> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

fn be_u64(v: &[u8], what: &str) -> anyhow::Result<u64> {
    Ok(u64::from_be_bytes(
        v.try_into().with_context(|| format!("{what} is 8 bytes"))?,
    ))
}

fn event_key(event: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(event.len() + 1 + 8);
    k.extend_from_slice(event.as_bytes());
    k.push(0);
    k
}

fn seat_key(event: &str, pool: PoolIdx, seat: SeatIdx) -> Vec<u8> {
    let mut k = event_key(event);
    k.extend_from_slice(&pool.to_be_bytes());
    k.extend_from_slice(&seat.to_be_bytes());
    k
}

/// What a restart reads back.
pub struct Loaded {
    pub records: Vec<Record>,
    pub incarnation: u64,
    pub clock: Millis,
}

/// Which bloom filters a column family keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bloom {
    None,
    /// In its tables (SST files).
    Tables,
    /// In its tables and over its memtable.
    TablesAndMemtable,
}

/// Bloom filter bits per idempotency key (see [`Store::open`]).
const KEY_FILTER_BITS: f64 = 20.0;

/// A memtable's allocation unit (see [`Store::open`]).
const ARENA_BLOCK_BYTES: usize = 1 << 20;

impl Store {
    pub fn open(dir: &Path, options: StoreOptions) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        // The manager flushes the oldest family's memtable when the memtables together reach
        // seven eighths of the budget, and a family flushes its own at half the budget
        // (below). Writes do not stall at the budget: that held every sale behind the end of
        // a flush several times a minute (30 s runs: keyed p99 5.3-6.6 ms stalling, 3.0-3.6
        // not; docs/benchmarks.md, "Memory and restart"). What bounds memtables then is
        // RocksDB's stop at two memtables per family (docs/operations.md states both).
        let memtables = WriteBufferManager::new_write_buffer_manager(options.memtable_bytes, false);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_write_buffer_manager(&memtables);
        // Flushes and compactions run at a lower CPU priority than the node's own threads:
        // on a small machine a flush's burst otherwise takes a core from the sales in flight
        // and shows in their p99 (docs/benchmarks.md, "Memory and restart").
        let mut env = Env::new().context("creating RocksDB's environment")?;
        env.lower_thread_pool_cpu_priority();
        env.lower_high_priority_thread_pool_cpu_priority();
        opts.set_env(&env);
        // A flush or compaction syncs its new table a megabyte at a time rather than all at
        // the end: one large sync would hold the WAL's sync (every sale waits on it) behind it
        // on the same disk.
        opts.set_bytes_per_sync(1 << 20);
        // Flushes and compactions write their tables through the page cache unless the
        // operator asks for direct writes. Direct writes were the default once, chosen from
        // 30 s keyed runs where a flush's dirty pages seemed to slow the WAL syncs; in longer
        // runs (60 and 120 s) they cost the unkeyed p99 and did not help the keyed one
        // (docs/benchmarks.md, "Page-cache flushes by default"). `bytes_per_sync` above keeps
        // a flush's writeback in megabyte steps either way. The WAL itself stays buffered and
        // synced.
        let direct_writes = options.direct_writes
            && match takes_direct_writes(dir) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(
                        "store_direct_writes is on, but {} does not take direct writes ({e}): \
                         RocksDB's flushes go through the page cache",
                        dir.display()
                    );
                    false
                }
            };
        opts.set_use_direct_io_for_flush_and_compaction(direct_writes);
        let cf_options = |bloom: Bloom| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            // Index and filter blocks count against the cache instead of growing beside it
            // as the data does; level-0's stay pinned (they are read on every lookup).
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            let mut o = Options::default();
            if !matches!(bloom, Bloom::None) {
                // A table's filter and index are cut into 4 KiB partitions under a small
                // top-level block that stays pinned (charged to the cache, growing with the
                // number of tables): a lookup reads one partition of each through the cache.
                // With one filter per table, a node with a 24 MiB memtable budget, once its keys
                // first compacted (half a million keys at 20 bits: a 1.2 MB filter), read that
                // whole filter from the file for every keyed sale (seen in its stacks, in the
                // lookup the driver serves outside the core's lock), and sold a million keyed
                // orders in 389 s instead of 20 (docs/benchmarks.md, "Filters in partitions").
                // The cache did not keep it because the LRU cache is cut in shards (64 of
                // 1 MiB by default) and RocksDB frees a block larger than its shard once the
                // read releases it. Partitions never come near a shard. Tables written before
                // this change keep their whole filters until a compaction rewrites them; both
                // kinds read the same.
                table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
                table.set_partition_filters(true);
                table.set_metadata_block_size(4096);
                table.set_pin_top_level_index_and_filter(true);
            }
            match bloom {
                Bloom::None => {}
                // Point reads of orders, which mostly sit in one file: a bloom filter answers
                // most without reading a block.
                Bloom::Tables => table.set_bloom_filter(10.0, false),
                // Every keyed request looks its key up, nearly always a new one, in every
                // table whose key range covers it: with random keys, each level-0 table and
                // one per deeper level. A false positive sends the request to the disk for a
                // data block, queued behind the WAL's writes. At 10 bits (about 1% per table)
                // a 30 s keyed run at 20,000/s made about 1,000 disk reads; at 20 bits, 120
                // (docs/benchmarks.md), for 2.5 bytes of filter per key.
                //
                // The lookup runs under the core's lock: a filter over the memtable spares the
                // skip list that search. The families read only by refunds and order reads do
                // not pay its cost on every insert.
                Bloom::TablesAndMemtable => {
                    table.set_bloom_filter(KEY_FILTER_BITS, false);
                    o.set_memtable_prefix_bloom_ratio(0.05);
                    o.set_memtable_whole_key_filtering(true);
                }
            }
            // What a flush writes is compacted again soon: it is not worth compressing.
            use rocksdb::DBCompressionType::{Lz4, None as Plain};
            o.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
            o.set_block_based_table_factory(&table);
            // Half the shared budget per family: the busiest (the idempotency keys under keyed
            // load) flushes 16 MiB at a time with the defaults. Measured with a 64 MiB budget,
            // the whole budget each made flushes of 56 MiB whose bursts showed in the p99
            // (unkeyed 2.7-4.9 ms against 1.7-2.3 at half), and resident memory after a
            // million orders 1.35x that after 100,000 (1.09x at half); a quarter each made the
            // keys flush every few seconds. The budget itself is 32 MiB since filters went in
            // partitions: memtables full at a million orders are what the resident memory
            // grows by (docs/benchmarks.md, "Filters in partitions").
            o.set_write_buffer_size((options.memtable_bytes / 2).max(1 << 20));
            // RocksDB sizes a memtable's arena blocks at an eighth of its write buffer and the
            // manager counts them whole: with ten families and the default budget, 2 MiB
            // blocks would count 20 MiB against the budget before any data did, and flushes
            // would start on memtables nearly empty. Small blocks count what is used.
            o.set_arena_block_size(ARENA_BLOCK_BYTES);
            o.set_max_write_buffer_number(2);
            o
        };
        let ttl = options.key_ttl_ms;
        let mut keys = cf_options(Bloom::TablesAndMemtable);
        // Drops idempotency answers older than the TTL when RocksDB compacts; lookups treat
        // them as absent before that.
        keys.set_compaction_filter(
            "expire-idempotency-keys",
            move |_level: u32, _key: &[u8], value: &[u8]| match key_time(value) {
                Some(at) if at.saturating_add(ttl) <= wall_ms() => CompactionDecision::Remove,
                _ => CompactionDecision::Keep,
            },
        );
        let cfs = PLAIN_FAMILIES
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, cf_options(Bloom::None)))
            .chain(
                POINT_READ_FAMILIES
                    .into_iter()
                    .map(|n| ColumnFamilyDescriptor::new(n, cf_options(Bloom::Tables))),
            )
            .chain([ColumnFamilyDescriptor::new(KEYS, keys)]);
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .with_context(|| format!("opening RocksDB in {}", dir.display()))?;
        let mut memory_only = ReadOptions::default();
        memory_only.set_read_tier(ReadTier::BlockCache);
        let store = Store {
            db,
            key_ttl_ms: options.key_ttl_ms,
            memory_only,
            direct_writes,
            disk_reads: AtomicU64::new(0),
        };
        store.check_format(dir)?;
        Ok(store)
    }

    /// Stamps a new store with [`FORMAT`]; refuses one written in another layout (an older
    /// node kept orders and keys in other encodings and no order counter: reading it as this
    /// layout would reuse order numbers).
    fn check_format(&self, dir: &Path) -> anyhow::Result<()> {
        match self.node_u64(b"format")? {
            FORMAT => Ok(()),
            2 => self.upgrade_keys_from_format_2(),
            0 if self.node_u64(b"incarnation")? == 0 => {
                let mut b = WriteBatch::default();
                b.put_cf(self.cf(NODE), b"format", FORMAT.to_be_bytes());
                self.write(b)?;
                Ok(())
            }
            found => anyhow::bail!(
                "{} holds data of store format {found} (0: written before formats were \
                 numbered); this allot reads format {FORMAT}: run the allot that wrote it",
                dir.display()
            ),
        }
    }

    /// Format 2 kept a copy of the order in each key's answer; format 3 names it (the order is
    /// in the orders family in both). Rewrites every key, 10,000 to a synced batch, and stamps
    /// format 3 with the last: a node killed half-way redoes it on its next start, and a value
    /// already rewritten is told apart and left (a format-2 value starts with its own time,
    /// which its 8-byte prefix repeats).
    fn upgrade_keys_from_format_2(&self) -> anyhow::Result<()> {
        let mut batch = WriteBatch::default();
        let mut rewritten = 0u64;
        for item in self.db.iterator_cf(self.cf(KEYS), IteratorMode::Start) {
            let (key, value) = item?;
            let at = key_time(&value).context("a key's value lacks its time")?;
            let old = match postcard::take_from_bytes::<StoredKey>(&value[8..]) {
                Ok((old, rest)) if old.at == at && rest.is_empty() => old,
                _ => {
                    postcard::from_bytes::<KeyOnDisk<Outcome>>(&value[8..])
                        .context("a key that is neither format 2 nor 3")?;
                    continue;
                }
            };
            let v = key_value(at, old.index, old.body_hash, &old.outcome);
            batch.put_cf(self.cf(KEYS), &key, v);
            rewritten += 1;
            if batch.len() >= 10_000 {
                self.write(std::mem::take(&mut batch))?;
            }
        }
        batch.put_cf(self.cf(NODE), b"format", FORMAT.to_be_bytes());
        self.write(batch)?;
        tracing::info!(rewritten, "store upgraded from format 2 to {FORMAT}");
        Ok(())
    }

    /// RocksDB's own memory, as it reports it.
    pub fn memory(&self) -> StoreMemory {
        let int = |name: &str| -> u64 {
            PLAIN_FAMILIES
                .iter()
                .chain(&POINT_READ_FAMILIES)
                .chain(&[KEYS])
                .filter_map(|cf| {
                    self.db
                        .property_int_value_cf(self.cf(cf), name)
                        .ok()
                        .flatten()
                })
                .sum()
        };
        StoreMemory {
            // One cache shared by every family: any family reports all of it.
            block_cache: self
                .db
                .property_int_value_cf(self.cf(ORDERS), "rocksdb.block-cache-usage")
                .ok()
                .flatten()
                .unwrap_or(0),
            memtables: int("rocksdb.cur-size-all-mem-tables"),
            table_readers: int("rocksdb.estimate-table-readers-mem"),
        }
    }

    /// How many of the core's reads went past the memtables and block cache (see
    /// [`Store::lookup`]): each may have read the disk, though the page cache or the block
    /// cache may still have answered it.
    pub fn disk_reads(&self) -> u64 {
        self.disk_reads.load(Ordering::Relaxed)
    }

    /// Whether flushes and compactions write around the page cache (the data dir's file
    /// system takes direct writes).
    pub fn direct_writes(&self) -> bool {
        self.direct_writes
    }

    /// Compacts the idempotency answers now (the TTL filter runs), for tests.
    pub fn compact_keys(&self) {
        self.db
            .compact_range_cf(self.cf(KEYS), None::<&[u8]>, None::<&[u8]>);
    }

    /// Whether any idempotency answer is stored under `key`, expired or not (for tests).
    pub fn holds_key(&self, key: &str) -> anyhow::Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(KEYS), key.as_bytes())?
            .is_some())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    /// Bumps and syncs the incarnation (part of the automerge actor id), so a restarted node
    /// never re-issues an automerge sequence number.
    pub fn next_incarnation(&self) -> anyhow::Result<u64> {
        let next = self.node_u64(b"incarnation")? + 1;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(NODE), b"incarnation", next.to_be_bytes());
        self.write(b)?;
        Ok(next)
    }

    /// The region's secret for tagging hold and order ids: drawn from the OS's random source
    /// on first start and synced before any id is made with it, then read back at every
    /// start, so ids stay the same across restarts.
    pub fn id_key(&self) -> anyhow::Result<allot_node::IdKey> {
        if let Some(v) = self.db.get_cf(self.cf(NODE), b"id-key")? {
            let bytes: [u8; 32] = v.as_slice().try_into().context("the id key is 32 bytes")?;
            return Ok(allot_node::IdKey::new(bytes));
        }
        let mut bytes = [0u8; 32];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut bytes)
            .map_err(|_| anyhow::anyhow!("the OS random source failed"))?;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(NODE), b"id-key", bytes);
        self.write(b)?;
        Ok(allot_node::IdKey::new(bytes))
    }

    /// A counter of the node state column family (0 when never written).
    fn node_u64(&self, key: &[u8]) -> anyhow::Result<u64> {
        match self.db.get_cf(self.cf(NODE), key)? {
            None => Ok(0),
            Some(v) => Ok(u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .context("a node counter is 8 bytes")?,
            )),
        }
    }

    /// Writes one batch to the synced WAL.
    pub fn write(&self, batch: WriteBatch) -> Result<(), rocksdb::Error> {
        let mut w = WriteOptions::default();
        w.set_sync(true);
        self.db.write_opt(batch, &w)
    }

    /// Adds the state changes of `records` to `batch`.
    pub fn batch(&self, batch: &mut WriteBatch, records: &[Record]) {
        let mut clock = 0;
        let mut last = 0;
        // Row keys hold cumulative values, so within one batch only the last write of a key
        // matters: twenty sales from one pool put its counter and its row's seq once each.
        let mut rows = BTreeMap::new();
        // The hold and order counters likewise: one put per batch, not one per sale.
        let mut counters = Counters::default();
        for r in records {
            clock = clock.max(r.at);
            last = r.index;
            self.record(batch, &mut rows, &mut counters, r);
        }
        let cf = self.cf(ROWS);
        for (k, v) in rows {
            batch.put_cf(cf, k, v);
        }
        if let Some(n) = counters.next_hold {
            batch.put_cf(self.cf(NODE), b"next_hold", n.0.to_be_bytes());
        }
        if let Some(n) = counters.next_order {
            batch.put_cf(self.cf(NODE), b"next_order", n.0.to_be_bytes());
        }
        batch.put_cf(self.cf(NODE), b"clock", clock.to_be_bytes());
        // Record indices go on from here after a restart: a stored order's index is
        // comparable with the live core's.
        batch.put_cf(self.cf(NODE), b"last_index", last.to_be_bytes());
    }

    fn record(&self, b: &mut WriteBatch, rows: &mut Rows, counters: &mut Counters, r: &Record) {
        let key = |b: &mut WriteBatch, idem: Option<&allot_node::IdemRecord>| {
            if let Some(i) = idem {
                let v = key_value(r.at, RecordIndex(r.index), i.key.body_hash, &i.outcome);
                b.put_cf(self.cf(KEYS), i.key.key.as_bytes(), v);
            }
        };
        let stored = |order: &allot_node::Order| {
            enc(&StoredOrder {
                index: RecordIndex(r.index),
                order: order.clone(),
            })
        };
        match &r.body {
            RecordBody::EventCreated {
                genesis,
                meta,
                idem,
            } => {
                b.put_cf(self.cf(EVENTS), genesis.id.as_bytes(), enc(genesis));
                self.meta(b, &genesis.id, meta);
                key(b, idem.as_ref());
            }
            RecordBody::MetaChanged {
                event,
                changes,
                idem,
            } => {
                self.meta(b, event, changes);
                key(b, idem.as_ref());
            }
            RecordBody::HoldPlaced { hold, idem } => {
                b.put_cf(self.cf(HOLDS), hold.n.0.to_be_bytes(), enc(hold));
                counters.next_hold = counters.next_hold.max(Some(hold.n.next()));
                key(b, idem.as_ref());
            }
            RecordBody::HoldsReleased { holds, .. } => {
                for n in holds {
                    b.delete_cf(self.cf(HOLDS), n.0.to_be_bytes());
                }
            }
            RecordBody::OrderPlaced {
                order,
                hold,
                row,
                idem,
            } => {
                let n = order.n.0.to_be_bytes();
                b.put_cf(self.cf(ORDERS), n, stored(order));
                let mut by_event = event_key(&order.event);
                by_event.extend_from_slice(&n);
                b.put_cf(self.cf(EVENT_ORDERS), by_event, []);
                for &s in &order.seats {
                    b.put_cf(self.cf(SEATS), seat_key(&order.event, order.pool, s), n);
                }
                counters.next_order = counters.next_order.max(Some(order.n.next()));
                if let Some(h) = hold {
                    b.delete_cf(self.cf(HOLDS), h.0.to_be_bytes());
                    b.put_cf(self.cf(HOLD_ORDERS), h.0.to_be_bytes(), n);
                }
                self.row(rows, &order.event, row);
                key(b, idem.as_ref());
            }
            RecordBody::Refunded { order, row, idem } => {
                b.put_cf(self.cf(ORDERS), order.n.0.to_be_bytes(), stored(order));
                for &s in &order.seats {
                    b.delete_cf(self.cf(SEATS), seat_key(&order.event, order.pool, s));
                }
                self.row(rows, &order.event, row);
                key(b, idem.as_ref());
            }
            RecordBody::Granted { event, row, idem } => {
                self.row(rows, event, row);
                key(b, idem.as_ref());
            }
            RecordBody::PeerRow { event, row } => self.row(rows, event, row),
            RecordBody::KeyAnswered { idem } => key(b, Some(idem)),
            RecordBody::RowRestored { .. }
            | RecordBody::SeatsRestored { .. }
            | RecordBody::CountersRestored { .. } => {
                unreachable!(
                    "restore records are made by the store, never emitted by a running core"
                )
            }
        }
    }

    fn meta(&self, b: &mut WriteBatch, event: &str, changes: &[Vec<u8>]) {
        for c in changes {
            let mut k = event.as_bytes().to_vec();
            k.push(0);
            k.extend_from_slice(&Sha256::digest(c));
            b.put_cf(self.cf(META), k, c);
        }
    }

    /// A row is stored entry by entry (key order = the canonical entry order), with its seq:
    /// a sale rewrites one small key, whatever the history.
    fn row(&self, rows: &mut Rows, event: &str, row: &RowDelta) {
        let prefix = row_prefix(event, row.writer);
        for (stamp, entry) in &row.entries {
            let (pool, kind, sub) = entry.key();
            let mut k = prefix.clone();
            k.push(0);
            k.extend_from_slice(&pool.to_be_bytes());
            k.push(kind);
            k.extend_from_slice(&sub.to_be_bytes());
            rows.insert(k, enc(&(stamp, entry)));
        }
        let mut k = prefix;
        k.push(1);
        rows.insert(k, row.seq.to_be_bytes().to_vec());
    }

    /// Reads the live state back as restore records, in the order `Core::recover` needs:
    /// events with their rows and sold seats, live holds, counters.
    pub fn load(&self, incarnation: u64) -> anyhow::Result<Loaded> {
        let mut bodies = Vec::new();
        let mut events = Vec::new();
        for item in self.db.iterator_cf(self.cf(EVENTS), IteratorMode::Start) {
            let (_, v) = item?;
            let genesis: Genesis = postcard::from_bytes(&v).context("decoding a stored genesis")?;
            let mut prefix = genesis.id.as_bytes().to_vec();
            prefix.push(0);
            let mut meta = Vec::new();
            for item in self.db.prefix_iterator_cf(self.cf(META), &prefix) {
                let (k, v) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                meta.push(v.to_vec());
            }
            events.push((
                genesis.id.clone(),
                genesis.regions.len() as u16,
                genesis.hash(),
            ));
            bodies.push(RecordBody::EventCreated {
                genesis,
                meta,
                idem: None,
            });
        }
        for (event, regions, hash) in &events {
            for writer in 0..*regions {
                let prefix = row_prefix(event, writer);
                let mut entries = allot_crdt::Entries::new();
                let mut seq = 0;
                for item in self.db.prefix_iterator_cf(self.cf(ROWS), &prefix) {
                    let (k, v) = item?;
                    if !k.starts_with(&prefix) {
                        break;
                    }
                    match k.get(prefix.len()) {
                        Some(0) => entries.push(
                            postcard::from_bytes::<(u64, Entry)>(&v)
                                .context("decoding a row entry")?,
                        ),
                        Some(1) => {
                            seq = u64::from_be_bytes(v.as_ref().try_into().context("row seq")?)
                        }
                        _ => anyhow::bail!("unknown row key in event {event}"),
                    }
                }
                if seq > 0 {
                    let row = RowDelta {
                        genesis: *hash,
                        writer,
                        since: 0,
                        seq,
                        entries,
                    };
                    bodies.push(RecordBody::RowRestored {
                        event: event.clone(),
                        row,
                    });
                }
            }
        }
        for (event, ..) in &events {
            let prefix = event_key(event);
            let mut by_pool: BTreeMap<PoolIdx, Vec<(SeatIdx, OrderNo)>> = BTreeMap::new();
            for item in self.db.prefix_iterator_cf(self.cf(SEATS), &prefix) {
                let (k, v) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                let rest = &k[prefix.len()..];
                anyhow::ensure!(rest.len() == 6, "a seat key of event {event} is 6 bytes");
                let pool = PoolIdx::from_be_bytes([rest[0], rest[1]]);
                let seat = SeatIdx::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]);
                by_pool
                    .entry(pool)
                    .or_default()
                    .push((seat, OrderNo(be_u64(&v, "a seat's order")?)));
            }
            for (pool, sold) in by_pool {
                bodies.push(RecordBody::SeatsRestored {
                    event: event.clone(),
                    pool,
                    sold,
                });
            }
        }
        for item in self.db.iterator_cf(self.cf(HOLDS), IteratorMode::Start) {
            let (_, v) = item?;
            let hold: Hold = postcard::from_bytes(&v).context("decoding a hold")?;
            bodies.push(RecordBody::HoldPlaced { hold, idem: None });
        }
        bodies.push(RecordBody::CountersRestored {
            next_hold: HoldNo(self.node_u64(b"next_hold")?.max(1)),
            next_order: OrderNo(self.node_u64(b"next_order")?.max(1)),
        });
        let clock = self.node_u64(b"clock")?;
        let first = self.node_u64(b"last_index")? + 1;
        let records = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Record {
                index: first + i as u64,
                at: clock,
                body,
            })
            .collect();
        Ok(Loaded {
            records,
            incarnation,
            clock,
        })
    }

    /// Answers one of the core's reads, from the disk if need be (counted in
    /// [`disk_reads`](Self::disk_reads)). The answer reflects at least every write that was
    /// reported durable before the read was asked.
    pub fn lookup(&self, lookup: &Lookup, now: Millis) -> anyhow::Result<Found> {
        self.disk_reads.fetch_add(1, Ordering::Relaxed);
        self.lookup_in(lookup, now, &ReadOptions::default())
    }

    /// Like [`lookup`](Self::lookup), from memory only (memtables and block cache): `None`
    /// when the answer needs the disk. Cheap enough to run while the core's lock is held,
    /// which spares a new key (absent: memtable and SST bloom filters say so) a second trip
    /// through the lock.
    pub fn lookup_in_memory(&self, lookup: &Lookup, now: Millis) -> Option<anyhow::Result<Found>> {
        match self.lookup_in(lookup, now, &self.memory_only) {
            Err(e)
                if e.downcast_ref::<rocksdb::Error>()
                    .is_some_and(|e| e.kind() == rocksdb::ErrorKind::Incomplete) =>
            {
                None
            }
            other => Some(other),
        }
    }

    fn lookup_in(&self, lookup: &Lookup, now: Millis, opts: &ReadOptions) -> anyhow::Result<Found> {
        Ok(match lookup {
            Lookup::Key(key) => {
                let v = self
                    .db
                    .get_pinned_cf_opt(self.cf(KEYS), key.as_bytes(), opts)?;
                let live = v.as_ref().and_then(|v| {
                    key_time(v)
                        .filter(|at| at.saturating_add(self.key_ttl_ms) > now)
                        .map(|at| (at, postcard::from_bytes::<KeyOnDisk<Outcome>>(&v[8..])))
                });
                match live {
                    None => Found::Key(None),
                    Some((at, decoded)) => {
                        let k = decoded.context("decoding a key")?;
                        drop(v);
                        Found::Key(Some(StoredKey {
                            at,
                            index: k.index,
                            body_hash: k.body_hash,
                            outcome: self.answer(key, k.answer, opts)?,
                        }))
                    }
                }
            }
            Lookup::Order(n) => Found::Order(self.order(*n, opts)?),
            Lookup::OrderOfHold(HoldNo(h)) => {
                match self
                    .db
                    .get_pinned_cf_opt(self.cf(HOLD_ORDERS), h.to_be_bytes(), opts)?
                {
                    Some(n) => {
                        Found::Order(self.order(OrderNo(be_u64(&n, "an order number")?), opts)?)
                    }
                    None => Found::Order(None),
                }
            }
        })
    }

    /// A key's answer as the core gave it: an order named by the key is read back with the
    /// status it had then.
    fn answer(
        &self,
        key: &str,
        answer: AnswerOnDisk<Outcome>,
        opts: &ReadOptions,
    ) -> anyhow::Result<Outcome> {
        Ok(match answer {
            AnswerOnDisk::Other(outcome) => outcome,
            AnswerOnDisk::Order { n, status } => match self.order(n, opts)? {
                Some(stored) => Outcome::Order(allot_node::Order {
                    status,
                    ..stored.order
                }),
                None => anyhow::bail!(
                    "idempotency key {key:?} answers order {}, which is missing",
                    n.0
                ),
            },
        })
    }

    fn order(&self, n: OrderNo, opts: &ReadOptions) -> anyhow::Result<Option<StoredOrder>> {
        self.db
            .get_pinned_cf_opt(self.cf(ORDERS), n.0.to_be_bytes(), opts)?
            .map(|v| postcard::from_bytes(&v).context("decoding an order"))
            .transpose()
    }

    /// Orders after number `after`, of one event or all, at most `limit`, in number order.
    pub fn orders_after(
        &self,
        event: Option<&str>,
        after: u64,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredOrder>> {
        let from = after.saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        match event {
            None => {
                let it = self.db.iterator_cf(
                    self.cf(ORDERS),
                    IteratorMode::From(&from, Direction::Forward),
                );
                for item in it.take(limit) {
                    let (_, v) = item?;
                    out.push(postcard::from_bytes(&v).context("decoding an order")?);
                }
            }
            Some(event) => {
                let prefix = event_key(event);
                let mut start = prefix.clone();
                start.extend_from_slice(&from);
                let it = self.db.iterator_cf(
                    self.cf(EVENT_ORDERS),
                    IteratorMode::From(&start, Direction::Forward),
                );
                for item in it {
                    let (k, _) = item?;
                    if !k.starts_with(&prefix) || out.len() == limit {
                        break;
                    }
                    let n = be_u64(&k[prefix.len()..], "an order number")?;
                    match self.order(OrderNo(n), &ReadOptions::default())? {
                        Some(o) => out.push(o),
                        None => anyhow::bail!("event {event} lists order {n}, which is missing"),
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allot_node::{Order, OrderStatus};

    /// A new key's absence, once the keys have compacted into one large table, costs a read
    /// of one filter partition, never of the table's whole filter: with one filter per table,
    /// a node whose cache did not keep it read it whole (1.2 MB) for every keyed sale and sold
    /// twenty times slower. The reads from memory only still never call a stored key absent.
    #[test]
    fn a_new_key_reads_a_filter_partition_not_the_whole_filter() {
        use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
        let dir = tempfile::tempdir().unwrap();
        // A cache smaller than the filter over 300,000 keys (750 KB at 20 bits a key).
        let options = StoreOptions {
            block_cache_bytes: 512 << 10,
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), options).unwrap();
        let at = wall_ms();
        let answer = Outcome::Released { hold: HoldNo(1) };
        let stored = 300_000u64;
        for chunk in 0..stored / 10_000 {
            let mut b = WriteBatch::default();
            for i in 0..10_000u64 {
                let n = chunk * 10_000 + i;
                let value = key_value(at, RecordIndex(n), [0; 32], &answer);
                b.put_cf(store.cf(KEYS), format!("stored-{n}"), value);
            }
            store.write(b).unwrap();
            if chunk % 10 == 9 {
                store.db.flush_cf(store.cf(KEYS)).unwrap();
            }
        }
        store.compact_keys();
        let property = |name: &str| {
            store
                .db
                .property_value_cf(store.cf(KEYS), name)
                .unwrap()
                .unwrap_or_default()
        };
        assert_eq!(
            property("rocksdb.num-files-at-level0"),
            "0",
            "the keys compacted"
        );
        let tables = property("rocksdb.aggregated-table-properties");
        let partitions = tables
            .split(';')
            .find_map(|p| p.trim().strip_prefix("# index partitions="))
            .and_then(|n| n.trim().parse::<u64>().ok());
        assert!(
            partitions.is_some_and(|n| n > 1),
            "partitioned tables: {tables}"
        );

        // New keys inside the stored keys' range, so that the table's filter is consulted.
        let new_key = |i: u64| Lookup::Key(format!("stored-{}x", i * 1_499));
        set_perf_stats(PerfStatsLevel::EnableCount);
        let mut perf = PerfContext::default();
        let mut most = 0;
        for i in 0..200 {
            perf.reset();
            assert!(matches!(
                store.lookup(&new_key(i), at),
                Ok(Found::Key(None))
            ));
            most = most.max(perf.metric(PerfMetric::BlockReadByte));
        }
        set_perf_stats(PerfStatsLevel::Disable);
        // A whole filter (750 KB) is read at least once, cached or not.
        assert!(most < 16 << 10, "a new key's lookup read {most} bytes");

        let (mut needed_disk, mut from_memory) = (0, 0);
        for i in 0..200 {
            let n = i * 1_499;
            let key = Lookup::Key(format!("stored-{n}"));
            let in_memory = |store: &Store| match store.lookup_in_memory(&key, at) {
                None => false,
                Some(Ok(Found::Key(Some(k)))) => {
                    assert_eq!(k.outcome, answer);
                    true
                }
                Some(other) => panic!("stored-{n} from memory: {:?}", other.map(|_| ())),
            };
            needed_disk += usize::from(!in_memory(&store));
            let found = store.lookup(&key, at).unwrap();
            assert!(matches!(found, Found::Key(Some(k)) if k.outcome == answer));
            from_memory += usize::from(in_memory(&store));
        }
        // Both of the memory-only read's answers were exercised.
        assert!(
            needed_disk > 0 && from_memory > 0,
            "{needed_disk} {from_memory}"
        );
    }

    /// A data dir of format 2 (keys holding copies of their orders) is upgraded at open and its
    /// keys answer as before; an upgrade cut short and run again leaves the rewritten keys be.
    #[test]
    fn a_format_2_store_is_upgraded_and_its_keys_answer_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let refunded = Order {
            n: OrderNo(7),
            event: "arena".into(),
            pool: 0,
            quantity: 2,
            seats: vec![],
            customer: "c-1".into(),
            price_cents: 10_000,
            payment_ref: "pay".into(),
            status: OrderStatus::Refunded,
            created_at: 5,
            hold: None,
        };
        let bought = Outcome::Order(Order {
            status: OrderStatus::Confirmed,
            ..refunded.clone()
        });
        let released = Outcome::Released { hold: HoldNo(3) };
        let at = wall_ms();
        let keys = [("buy", &bought), ("release", &released)];
        let format_2 = |store: &Store| {
            let mut b = WriteBatch::default();
            b.put_cf(store.cf(NODE), b"format", 2u64.to_be_bytes());
            store.write(b).unwrap();
        };
        {
            let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
            let mut b = WriteBatch::default();
            let order = StoredOrder {
                index: RecordIndex(9),
                order: refunded.clone(),
            };
            b.put_cf(store.cf(ORDERS), 7u64.to_be_bytes(), enc(&order));
            for (key, outcome) in keys {
                let mut v = at.to_be_bytes().to_vec();
                v.extend(enc(&StoredKey {
                    at,
                    index: RecordIndex(9),
                    body_hash: [1; 32],
                    outcome: outcome.clone(),
                }));
                b.put_cf(store.cf(KEYS), key, v);
            }
            store.write(b).unwrap();
            format_2(&store);
        }
        // Upgraded; then as if the stamp had not landed; then opened as format 3.
        for round in 0..3 {
            let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
            assert_eq!(store.node_u64(b"format").unwrap(), FORMAT);
            for (key, outcome) in keys {
                match store.lookup(&Lookup::Key(key.into()), at).unwrap() {
                    Found::Key(Some(k)) => {
                        assert_eq!(&k.outcome, outcome, "{key}, round {round}");
                        assert_eq!((k.at, k.index, k.body_hash), (at, RecordIndex(9), [1; 32]));
                    }
                    other => panic!("{key}, round {round}: {other:?}"),
                }
            }
            if round == 0 {
                format_2(&store);
            }
        }
    }
}
