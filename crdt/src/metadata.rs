//! An event's editable metadata, an automerge document.
//!
//! Operators in different regions may edit fields concurrently; automerge keeps both edits
//! (different fields) or picks one deterministically (same field). The catalog region writes
//! the whole structure in one change shipped with the genesis; every other region only edits
//! fields of that structure, because objects created concurrently in automerge hide one side's
//! writes.
//!
//! The actor id is the region plus its incarnation, bumped at every start, so a node that lost
//! unsynced changes in a crash can never re-issue a sequence number with other content.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, ObjType, ReadDoc, ScalarValue, Value, ROOT,
};
use serde::{Deserialize, Serialize};

/// Field values as the API shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventMeta {
    pub name: String,
    pub description: String,
    pub venue: String,
    pub lat: f64,
    pub lon: f64,
    /// RFC 3339.
    pub starts_at: String,
    pub hold_ttl_s: u64,
    /// Price of one unit of each pool, in the event currency's minor unit.
    pub prices: BTreeMap<String, u64>,
    /// Whether the regions' rebalancer moves this event's quota (operators pause it). A
    /// document written before the field existed reads as `true`.
    pub rebalance: bool,
    /// Whether holds and purchases are taken (operators open, pause and close an on-sale).
    /// A document written before the field existed reads as `open`.
    pub sales: SalesState,
    /// Holds and purchases are taken from this moment (Unix ms), judged by each region's own
    /// clock; `None`: at once.
    pub on_sale_at_ms: Option<u64>,
}

/// An on-sale's state, as operators set it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SalesState {
    #[default]
    Open,
    /// For now: it may open again.
    Paused,
    /// For good, as operators mean it (they may still reopen it).
    Closed,
}

impl SalesState {
    pub fn as_str(self) -> &'static str {
        match self {
            SalesState::Open => "open",
            SalesState::Paused => "paused",
            SalesState::Closed => "closed",
        }
    }

    fn parse(s: &str) -> Option<SalesState> {
        [SalesState::Open, SalesState::Paused, SalesState::Closed]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// An edit: `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub venue: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub starts_at: Option<String>,
    pub hold_ttl_s: Option<u64>,
    pub prices: BTreeMap<String, u64>,
    pub rebalance: Option<bool>,
    pub sales: Option<SalesState>,
    /// `Some(None)` removes the on-sale time (sales open at once).
    pub on_sale_at_ms: Option<Option<u64>>,
}

/// The automerge actor: region name and incarnation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActorIncarnation {
    pub region: String,
    pub incarnation: u64,
}

impl ActorIncarnation {
    fn actor_id(&self) -> ActorId {
        let mut bytes = self.region.as_bytes().to_vec();
        bytes.push(0);
        bytes.extend_from_slice(&self.incarnation.to_be_bytes());
        ActorId::from(bytes)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    #[error("malformed change: {0}")]
    Load(String),
    #[error("pool {0:?} has no price to edit")]
    UnknownPool(String),
    #[error("field {0} is missing or has the wrong type")]
    Field(&'static str),
    #[error("change depends on changes this replica lacks")]
    MissingDeps,
}

pub struct MetaDoc {
    doc: AutoCommit,
}

impl std::fmt::Debug for MetaDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaDoc").finish_non_exhaustive()
    }
}

impl MetaDoc {
    /// The catalog region's first change: the whole structure at once.
    pub fn create(
        actor: &ActorIncarnation,
        meta: &EventMeta,
    ) -> Result<(MetaDoc, Vec<u8>), MetaError> {
        let mut doc = AutoCommit::new().with_actor(actor.actor_id());
        doc.put(ROOT, "name", meta.name.as_str())?;
        doc.put(ROOT, "description", meta.description.as_str())?;
        doc.put(ROOT, "venue", meta.venue.as_str())?;
        doc.put(ROOT, "lat", meta.lat)?;
        doc.put(ROOT, "lon", meta.lon)?;
        doc.put(ROOT, "starts_at", meta.starts_at.as_str())?;
        doc.put(ROOT, "hold_ttl_s", ScalarValue::Uint(meta.hold_ttl_s))?;
        doc.put(ROOT, "rebalance", meta.rebalance)?;
        doc.put(ROOT, "sales", meta.sales.as_str())?;
        if let Some(t) = meta.on_sale_at_ms {
            doc.put(ROOT, "on_sale_at_ms", ScalarValue::Uint(t))?;
        }
        let prices = doc.put_object(ROOT, "prices", ObjType::Map)?;
        for (pool, cents) in &meta.prices {
            doc.put(&prices, pool.as_str(), ScalarValue::Uint(*cents))?;
        }
        doc.commit();
        let change = doc
            .get_last_local_change()
            .ok_or(MetaError::Field("first change"))?
            .raw_bytes()
            .to_vec();
        Ok((MetaDoc { doc }, change))
    }

    /// A replica built from changes received or persisted (the first one being the catalog's).
    pub fn from_changes(
        actor: &ActorIncarnation,
        changes: &[Vec<u8>],
    ) -> Result<MetaDoc, MetaError> {
        let mut m = MetaDoc {
            doc: AutoCommit::new().with_actor(actor.actor_id()),
        };
        m.apply(changes)?;
        m.read()?;
        Ok(m)
    }

    /// Edits fields; returns the change to persist, then send. Never creates objects.
    pub fn patch(&mut self, p: &MetaPatch) -> Result<Option<Vec<u8>>, MetaError> {
        let prices = match self.doc.get(ROOT, "prices")? {
            Some((Value::Object(ObjType::Map), id)) => id,
            _ => return Err(MetaError::Field("prices")),
        };
        for pool in p.prices.keys() {
            if self.doc.get(&prices, pool.as_str())?.is_none() {
                return Err(MetaError::UnknownPool(pool.clone()));
            }
        }
        let d = &mut self.doc;
        if let Some(v) = &p.name {
            d.put(ROOT, "name", v.as_str())?;
        }
        if let Some(v) = &p.description {
            d.put(ROOT, "description", v.as_str())?;
        }
        if let Some(v) = &p.venue {
            d.put(ROOT, "venue", v.as_str())?;
        }
        if let Some(v) = p.lat {
            d.put(ROOT, "lat", v)?;
        }
        if let Some(v) = p.lon {
            d.put(ROOT, "lon", v)?;
        }
        if let Some(v) = &p.starts_at {
            d.put(ROOT, "starts_at", v.as_str())?;
        }
        if let Some(v) = p.hold_ttl_s {
            d.put(ROOT, "hold_ttl_s", ScalarValue::Uint(v))?;
        }
        if let Some(v) = p.rebalance {
            // A scalar at the root: a region may write it even where the catalog's first
            // change did not (a document from before the field), and concurrent writes of
            // it resolve like any other field.
            d.put(ROOT, "rebalance", v)?;
        }
        // Scalars at the root as well, for the same reasons.
        if let Some(v) = p.sales {
            d.put(ROOT, "sales", v.as_str())?;
        }
        match p.on_sale_at_ms {
            Some(Some(t)) => d.put(ROOT, "on_sale_at_ms", ScalarValue::Uint(t))?,
            Some(None) => d.put(ROOT, "on_sale_at_ms", ScalarValue::Null)?,
            None => {}
        }
        for (pool, cents) in &p.prices {
            d.put(&prices, pool.as_str(), ScalarValue::Uint(*cents))?;
        }
        Ok(d.commit()
            .and_then(|_| d.get_last_local_change().map(|c| c.raw_bytes().to_vec())))
    }

    pub fn read(&self) -> Result<EventMeta, MetaError> {
        read_doc(&self.doc)
    }

    /// Applies changes only if the document still reads as an event's metadata afterwards,
    /// and returns what it reads; otherwise nothing changes (the changes are tried on a fork
    /// first). For changes from a peer, which may be well-formed automerge and still wrong.
    pub fn apply_checked(&mut self, changes: &[Vec<u8>]) -> Result<EventMeta, MetaError> {
        let decoded = decode(changes)?;
        let mut trial = self.doc.fork();
        trial.apply_changes(decoded.clone())?;
        let meta = read_doc(&trial)?;
        self.doc.apply_changes(decoded)?;
        Ok(meta)
    }
}

fn decode(changes: &[Vec<u8>]) -> Result<Vec<Change>, MetaError> {
    changes
        .iter()
        .map(|b| Change::from_bytes(b.clone()).map_err(|e| MetaError::Load(e.to_string())))
        .collect()
}

fn read_doc(doc: &AutoCommit) -> Result<EventMeta, MetaError> {
    let s = |k: &'static str| -> Result<String, MetaError> {
        match doc.get(ROOT, k)? {
            Some((Value::Scalar(v), _)) => v.as_str().map(str::to_owned).ok_or(MetaError::Field(k)),
            _ => Err(MetaError::Field(k)),
        }
    };
    let f = |k: &'static str| -> Result<f64, MetaError> {
        match doc.get(ROOT, k)? {
            Some((Value::Scalar(v), _)) => v.as_f64().ok_or(MetaError::Field(k)),
            _ => Err(MetaError::Field(k)),
        }
    };
    let hold_ttl_s = match doc.get(ROOT, "hold_ttl_s")? {
        Some((Value::Scalar(v), _)) => v.as_u64().ok_or(MetaError::Field("hold_ttl_s"))?,
        _ => return Err(MetaError::Field("hold_ttl_s")),
    };
    let rebalance = match doc.get(ROOT, "rebalance")? {
        None => true,
        Some((Value::Scalar(v), _)) => match v.as_ref() {
            ScalarValue::Boolean(b) => *b,
            _ => return Err(MetaError::Field("rebalance")),
        },
        Some(_) => return Err(MetaError::Field("rebalance")),
    };
    let sales = match doc.get(ROOT, "sales")? {
        None => SalesState::Open,
        Some((Value::Scalar(v), _)) => v
            .as_str()
            .and_then(SalesState::parse)
            .ok_or(MetaError::Field("sales"))?,
        Some(_) => return Err(MetaError::Field("sales")),
    };
    let on_sale_at_ms = match doc.get(ROOT, "on_sale_at_ms")? {
        None => None,
        Some((Value::Scalar(v), _)) => match v.as_ref() {
            ScalarValue::Null => None,
            ScalarValue::Uint(t) => Some(*t),
            _ => return Err(MetaError::Field("on_sale_at_ms")),
        },
        Some(_) => return Err(MetaError::Field("on_sale_at_ms")),
    };
    let mut prices = BTreeMap::new();
    if let Some((Value::Object(ObjType::Map), id)) = doc.get(ROOT, "prices")? {
        for key in doc.keys(&id) {
            let cents = match doc.get(&id, key.as_str())? {
                Some((Value::Scalar(v), _)) => v.as_u64().ok_or(MetaError::Field("prices"))?,
                _ => return Err(MetaError::Field("prices")),
            };
            prices.insert(key, cents);
        }
    } else {
        return Err(MetaError::Field("prices"));
    }
    Ok(EventMeta {
        name: s("name")?,
        description: s("description")?,
        venue: s("venue")?,
        lat: f("lat")?,
        lon: f("lon")?,
        starts_at: s("starts_at")?,
        hold_ttl_s,
        prices,
        rebalance,
        sales,
        on_sale_at_ms,
    })
}

impl MetaDoc {
    pub fn heads(&mut self) -> Vec<[u8; 32]> {
        self.doc.get_heads().into_iter().map(|h| h.0).collect()
    }

    /// The changes a peer at `heads` lacks, encoded.
    pub fn changes_since(&mut self, heads: &[[u8; 32]]) -> Vec<Vec<u8>> {
        let heads: Vec<ChangeHash> = heads.iter().map(|h| ChangeHash(*h)).collect();
        self.doc
            .get_changes(&heads)
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    }

    /// Applies encoded changes (duplicates are ignored by automerge). All changes are decoded
    /// before any is applied, so a malformed batch changes nothing.
    pub fn apply(&mut self, changes: &[Vec<u8>]) -> Result<(), MetaError> {
        self.doc.apply_changes(decode(changes)?)?;
        Ok(())
    }

    /// True when any of these encoded changes is one this replica lacks (or cannot decode, so
    /// that applying it reports the error).
    pub fn has_new(&mut self, changes: &[Vec<u8>]) -> bool {
        changes.iter().any(|b| match Change::from_bytes(b.clone()) {
            Ok(c) => self.doc.get_change_by_hash(&c.hash()).is_none(),
            Err(_) => true,
        })
    }

    /// Every change, for persisting a fresh replica in one go.
    pub fn all_changes(&mut self) -> Vec<Vec<u8>> {
        self.changes_since(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> EventMeta {
        EventMeta {
            name: "Rock".into(),
            description: "d".into(),
            venue: "Arena".into(),
            lat: 52.5,
            lon: 13.4,
            starts_at: "2027-06-01T19:00:00Z".into(),
            hold_ttl_s: 600,
            prices: [("floor".to_string(), 8900)].into(),
            rebalance: true,
            sales: SalesState::Open,
            on_sale_at_ms: None,
        }
    }

    #[test]
    fn sales_state_and_on_sale_time_replicate_and_clear() {
        let (mut a, first) = MetaDoc::create(&actor("eu-west", 1), &meta()).unwrap();
        let mut b = MetaDoc::from_changes(&actor("us-east", 1), &[first]).unwrap();
        let pause = a
            .patch(&MetaPatch {
                sales: Some(SalesState::Paused),
                on_sale_at_ms: Some(Some(1_800_000_000_000)),
                ..Default::default()
            })
            .unwrap()
            .unwrap();
        let read = b.apply_checked(&[pause]).unwrap();
        assert_eq!(read.sales, SalesState::Paused);
        assert_eq!(read.on_sale_at_ms, Some(1_800_000_000_000));
        let open = b
            .patch(&MetaPatch {
                sales: Some(SalesState::Open),
                on_sale_at_ms: Some(None),
                ..Default::default()
            })
            .unwrap()
            .unwrap();
        let read = a.apply_checked(&[open]).unwrap();
        assert_eq!((read.sales, read.on_sale_at_ms), (SalesState::Open, None));
        assert_eq!(a.read().unwrap(), b.read().unwrap());
        // A peer's change that writes nonsense into the field is refused and changes nothing.
        let mut bad = b.doc.fork();
        bad.put(ROOT, "sales", "sold").unwrap();
        let change = bad.get_last_local_change().map(|c| c.raw_bytes().to_vec());
        bad.commit();
        let change = change
            .or_else(|| bad.get_last_local_change().map(|c| c.raw_bytes().to_vec()))
            .unwrap();
        assert!(matches!(
            a.apply_checked(&[change]),
            Err(MetaError::Field("sales"))
        ));
        assert_eq!(a.read().unwrap().sales, SalesState::Open);
    }

    #[test]
    fn a_pause_from_any_region_reaches_every_replica_and_old_documents_read_unpaused() {
        // The catalog's first change as written before the field existed.
        let mut old = AutoCommit::new().with_actor(actor("eu-west", 1).actor_id());
        let m = meta();
        old.put(ROOT, "name", m.name.as_str()).unwrap();
        old.put(ROOT, "description", m.description.as_str())
            .unwrap();
        old.put(ROOT, "venue", m.venue.as_str()).unwrap();
        old.put(ROOT, "lat", m.lat).unwrap();
        old.put(ROOT, "lon", m.lon).unwrap();
        old.put(ROOT, "starts_at", m.starts_at.as_str()).unwrap();
        old.put(ROOT, "hold_ttl_s", ScalarValue::Uint(m.hold_ttl_s))
            .unwrap();
        let prices = old.put_object(ROOT, "prices", ObjType::Map).unwrap();
        old.put(&prices, "floor", ScalarValue::Uint(8900)).unwrap();
        old.commit();
        let first = old.get_last_local_change().unwrap().raw_bytes().to_vec();
        let mut a =
            MetaDoc::from_changes(&actor("eu-west", 2), std::slice::from_ref(&first)).unwrap();
        let mut b = MetaDoc::from_changes(&actor("us-east", 1), &[first]).unwrap();
        assert!(a.read().unwrap().rebalance);
        let pause = b
            .patch(&MetaPatch {
                rebalance: Some(false),
                ..Default::default()
            })
            .unwrap()
            .unwrap();
        let rename = a
            .patch(&MetaPatch {
                name: Some("Rock II".into()),
                ..Default::default()
            })
            .unwrap()
            .unwrap();
        a.apply_checked(&[pause]).unwrap();
        b.apply_checked(&[rename]).unwrap();
        assert_eq!(a.read().unwrap(), b.read().unwrap());
        assert!(!a.read().unwrap().rebalance);
        assert_eq!(a.read().unwrap().name, "Rock II");
    }

    #[test]
    fn a_rebalance_field_of_the_wrong_type_is_refused() {
        let (a, first) = MetaDoc::create(&actor("eu-west", 1), &meta()).unwrap();
        let mut bad = AutoCommit::new().with_actor(actor("us-east", 1).actor_id());
        bad.apply_changes(decode(&[first]).unwrap()).unwrap();
        bad.put(ROOT, "rebalance", "no").unwrap();
        bad.commit();
        let change = bad.get_last_local_change().unwrap().raw_bytes().to_vec();
        let mut a = a;
        let before = a.heads();
        assert!(matches!(
            a.apply_checked(&[change]),
            Err(MetaError::Field("rebalance"))
        ));
        assert_eq!(a.heads(), before);
    }

    fn actor(r: &str, i: u64) -> ActorIncarnation {
        ActorIncarnation {
            region: r.into(),
            incarnation: i,
        }
    }

    #[test]
    fn concurrent_edits_of_different_fields_both_survive() {
        let (mut a, first) = MetaDoc::create(&actor("eu-west", 1), &meta()).unwrap();
        let mut b = MetaDoc::from_changes(&actor("us-east", 1), &[first]).unwrap();
        let ca = a
            .patch(&MetaPatch {
                name: Some("Rock II".into()),
                ..Default::default()
            })
            .unwrap()
            .unwrap();
        let cb = b
            .patch(&MetaPatch {
                prices: [("floor".to_string(), 9900)].into(),
                ..Default::default()
            })
            .unwrap()
            .unwrap();
        a.apply(std::slice::from_ref(&cb)).unwrap();
        b.apply(&[ca.clone(), ca]).unwrap();
        assert_eq!(a.read().unwrap(), b.read().unwrap());
        let m = a.read().unwrap();
        assert_eq!((m.name.as_str(), m.prices["floor"]), ("Rock II", 9900));
        assert_eq!(a.heads(), b.heads());
    }

    #[test]
    fn changes_since_heads_bring_a_peer_up_to_date() {
        let (mut a, first) = MetaDoc::create(&actor("eu-west", 1), &meta()).unwrap();
        let mut b = MetaDoc::from_changes(&actor("us-east", 7), &[first]).unwrap();
        for i in 0..5 {
            a.patch(&MetaPatch {
                hold_ttl_s: Some(60 + i),
                ..Default::default()
            })
            .unwrap();
        }
        let missing = a.changes_since(&b.heads());
        assert_eq!(missing.len(), 5);
        b.apply(&missing).unwrap();
        assert_eq!(b.read().unwrap().hold_ttl_s, 64);
    }

    #[test]
    fn editing_an_unknown_price_or_applying_garbage_changes_nothing() {
        let (mut a, _) = MetaDoc::create(&actor("eu-west", 1), &meta()).unwrap();
        let before = a.heads();
        let p = MetaPatch {
            name: Some("x".into()),
            prices: [("vip".to_string(), 1)].into(),
            ..Default::default()
        };
        assert!(matches!(a.patch(&p), Err(MetaError::UnknownPool(_))));
        assert!(a.apply(&[vec![1, 2, 3]]).is_err());
        assert_eq!(a.heads(), before);
        assert_eq!(a.read().unwrap(), meta());
    }
}
