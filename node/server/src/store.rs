//! The RocksDB store: the region's durable state, by column family.
//!
//! The core emits records; [`Store::batch`] turns each into puts and deletes of *state* (not
//! a log), so restart time does not grow with history, and [`Store::load`] turns the state back
//! into the restore records `Core::recover` takes. One `WriteBatch` per group of records is
//! written with `sync = true`: everything a reply depends on is in the synced WAL first.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use allot_crdt::{Entry, Genesis, RowDelta};
use allot_node::{Hold, IdempotencyKey, Millis, Order, Outcome, Record, RecordBody};
use anyhow::Context;
use rocksdb::{
    ColumnFamilyDescriptor, CompactionDecision, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use sha2::{Digest, Sha256};

const EVENTS: &str = "events";
const META: &str = "meta";
const ROWS: &str = "rows";
const HOLDS: &str = "holds";
const ORDERS: &str = "orders";
const KEYS: &str = "idempotency";
const NODE: &str = "node";

/// Row keys and values of one batch, last write wins.
type Rows = BTreeMap<Vec<u8>, Vec<u8>>;

/// How long an idempotency key is kept. The store's compaction drops older ones.
pub const KEY_TTL_MS: u64 = 24 * 3600 * 1000;

pub struct Store {
    db: DB,
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

/// Drops idempotency keys older than the TTL when RocksDB compacts.
fn expire_keys(_level: u32, _key: &[u8], value: &[u8]) -> CompactionDecision {
    match value
        .get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    {
        Some(at) if at.saturating_add(KEY_TTL_MS) < wall_ms() => CompactionDecision::Remove,
        _ => CompactionDecision::Keep,
    }
}

/// What a restart reads back.
pub struct Loaded {
    pub records: Vec<Record>,
    pub incarnation: u64,
    pub clock: Millis,
}

impl Store {
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut keys = Options::default();
        keys.set_compaction_filter("expire-idempotency-keys", expire_keys);
        let cfs = [EVENTS, META, ROWS, HOLDS, ORDERS, NODE]
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()))
            .chain([ColumnFamilyDescriptor::new(KEYS, keys)]);
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .with_context(|| format!("opening RocksDB in {}", dir.display()))?;
        Ok(Store { db })
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
        // Row keys hold cumulative values, so within one batch only the last write of a key
        // matters: twenty sales from one pool put its counter and its row's seq once each.
        let mut rows = BTreeMap::new();
        for r in records {
            clock = clock.max(r.at);
            self.record(batch, &mut rows, r);
        }
        let cf = self.cf(ROWS);
        for (k, v) in rows {
            batch.put_cf(cf, k, v);
        }
        batch.put_cf(self.cf(NODE), b"clock", clock.to_be_bytes());
    }

    fn record(&self, b: &mut WriteBatch, rows: &mut Rows, r: &Record) {
        let key = |b: &mut WriteBatch, idem: &Option<allot_node::IdemRecord>| {
            if let Some(i) = idem {
                let mut v = r.at.to_be_bytes().to_vec();
                v.extend(enc(&(&i.key.body_hash, &i.outcome)));
                b.put_cf(self.cf(KEYS), i.key.key.as_bytes(), v);
            }
        };
        match &r.body {
            RecordBody::EventCreated {
                genesis,
                meta,
                idem,
            } => {
                b.put_cf(self.cf(EVENTS), genesis.id.as_bytes(), enc(genesis));
                self.meta(b, &genesis.id, meta);
                key(b, idem);
            }
            RecordBody::MetaChanged {
                event,
                changes,
                idem,
            } => {
                self.meta(b, event, changes);
                key(b, idem);
            }
            RecordBody::HoldPlaced { hold, idem } => {
                b.put_cf(self.cf(HOLDS), hold.n.to_be_bytes(), enc(hold));
                b.put_cf(self.cf(NODE), b"next_hold", (hold.n + 1).to_be_bytes());
                key(b, idem);
            }
            RecordBody::HoldsReleased { holds, .. } => {
                for n in holds {
                    b.delete_cf(self.cf(HOLDS), n.to_be_bytes());
                }
            }
            RecordBody::OrderPlaced {
                order,
                hold,
                row,
                idem,
            } => {
                b.put_cf(self.cf(ORDERS), order.n.to_be_bytes(), enc(order));
                if let Some(h) = hold {
                    b.delete_cf(self.cf(HOLDS), h.to_be_bytes());
                }
                self.row(rows, &order.event, row);
                key(b, idem);
            }
            RecordBody::Refunded { order, row, idem } => {
                b.put_cf(self.cf(ORDERS), order.n.to_be_bytes(), enc(order));
                self.row(rows, &order.event, row);
                key(b, idem);
            }
            RecordBody::Granted { event, row, idem } => {
                self.row(rows, event, row);
                key(b, idem);
            }
            RecordBody::PeerRow { event, row } => self.row(rows, event, row),
            RecordBody::RowRestored { .. }
            | RecordBody::OrderRestored { .. }
            | RecordBody::KeyRestored { .. }
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

    /// Reads the whole state back as restore records, in the order `Core::recover` needs.
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
        for item in self.db.iterator_cf(self.cf(ORDERS), IteratorMode::Start) {
            let (_, v) = item?;
            let order: Order = postcard::from_bytes(&v).context("decoding an order")?;
            bodies.push(RecordBody::OrderRestored { order });
        }
        for item in self.db.iterator_cf(self.cf(HOLDS), IteratorMode::Start) {
            let (_, v) = item?;
            let hold: Hold = postcard::from_bytes(&v).context("decoding a hold")?;
            bodies.push(RecordBody::HoldPlaced { hold, idem: None });
        }
        let now = wall_ms();
        let mut keys = Vec::new();
        for item in self.db.iterator_cf(self.cf(KEYS), IteratorMode::Start) {
            let (k, v) = item?;
            let at = u64::from_be_bytes(
                v.get(..8)
                    .context("key timestamp")?
                    .try_into()
                    .expect("8 bytes"),
            );
            if at.saturating_add(KEY_TTL_MS) < now {
                continue;
            }
            let (body_hash, outcome): ([u8; 32], Outcome) =
                postcard::from_bytes(&v[8..]).context("decoding a key")?;
            let key = IdempotencyKey {
                key: String::from_utf8(k.to_vec()).context("key text")?,
                body_hash,
            };
            keys.push((at, RecordBody::KeyRestored { key, outcome }));
        }
        bodies.push(RecordBody::CountersRestored {
            next_hold: self.node_u64(b"next_hold")?.max(1),
        });
        let clock = self.node_u64(b"clock")?;
        // Keys keep their own time, so they expire 24 h after they were made, not after restart.
        keys.sort_by_key(|(at, _)| *at);
        let timed = bodies
            .into_iter()
            .map(|b| (clock, b))
            .chain(keys)
            .collect::<Vec<_>>();
        let records = timed
            .into_iter()
            .enumerate()
            .map(|(i, (at, body))| Record {
                index: i as u64 + 1,
                at,
                body,
            })
            .collect();
        Ok(Loaded {
            records,
            incarnation,
            clock,
        })
    }
}
