//! Hold and order ids. Each embeds the region that owns it, so any region can tell where to
//! send a request about it without a lookup, and a tag no one can guess, so knowing one id
//! tells nothing about the next: `h-<region>-<n>-<tag>`, `o-<region>-<n>-<tag>`.
//!
//! The tag is the first 96 bits of SHA-256 over a secret key of the region and the id's kind
//! and number. The key comes from the driver (random and kept in the store by the server,
//! drawn from the seed by the simulator), so ids stay stable across restarts and a seed still
//! replays byte for byte; and since the tag is recomputed, not stored, an id whose number
//! exists but whose tag is wrong is refused exactly like an unknown id, even for a hold long
//! released or expired.

use std::fmt;

use allot_crdt::valid_id;
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdKind {
    Hold,
    Order,
}

impl IdKind {
    fn prefix(self) -> &'static str {
        match self {
            IdKind::Hold => "h-",
            IdKind::Order => "o-",
        }
    }
}

/// Bytes of the tag: 96 bits.
const TAG_BYTES: usize = 12;

/// The unguessable part of an id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdTag([u8; TAG_BYTES]);

impl fmt::Debug for IdTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdTag({self})")
    }
}

impl fmt::Display for IdTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl IdTag {
    fn parse(s: &str) -> Option<IdTag> {
        if s.len() != TAG_BYTES * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let nibble = |b: u8| match b {
            b'0'..=b'9' => b - b'0',
            _ => b - b'a' + 10,
        };
        let b = s.as_bytes();
        let mut out = [0u8; TAG_BYTES];
        for (i, o) in out.iter_mut().enumerate() {
            *o = nibble(b[2 * i]) << 4 | nibble(b[2 * i + 1]);
        }
        Some(IdTag(out))
    }
}

/// A region's secret for tagging ids. Never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct IdKey([u8; 32]);

impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdKey(..)")
    }
}

impl IdKey {
    pub fn new(bytes: [u8; 32]) -> IdKey {
        IdKey(bytes)
    }

    /// A key anyone can compute from the region's name: for unit tests only. Drivers give
    /// the core a random key (see `Config::id_key`).
    pub fn insecure_for_tests(region: &str) -> IdKey {
        IdKey(Sha256::digest(format!("allot insecure test id key {region}")).into())
    }

    pub fn tag(&self, kind: IdKind, n: u64) -> IdTag {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update([kind as u8]);
        h.update(n.to_be_bytes());
        let digest = h.finalize();
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&digest[..TAG_BYTES]);
        IdTag(tag)
    }

    /// The id of hold or order `n` of `region` (whose key this is).
    pub fn format(&self, kind: IdKind, region: &str, n: impl Into<u64>) -> String {
        let n = n.into();
        GlobalId {
            kind,
            region: region.to_owned(),
            n,
            tag: self.tag(kind, n),
        }
        .to_string()
    }

    /// Whether `id` was made with this key. The comparison takes the same time wherever the
    /// tags differ, so timing answers reveals nothing about the right tag.
    pub fn verifies(&self, id: &GlobalId) -> bool {
        self.verifies_parts(id.kind, id.n, id.tag)
    }

    pub fn verifies_parts(&self, kind: IdKind, n: u64, tag: IdTag) -> bool {
        let want = self.tag(kind, n);
        want.0
            .iter()
            .zip(tag.0.iter())
            .fold(0u8, |d, (a, b)| d | (a ^ b))
            == 0
    }
}

/// A parsed hold or order id: well-formed, not yet verified against the owner's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GlobalId {
    pub kind: IdKind,
    pub region: String,
    pub n: u64,
    pub tag: IdTag,
}

impl GlobalId {
    pub fn parse(kind: IdKind, s: &str) -> Option<GlobalId> {
        let (region, n, tag) = GlobalId::parts(kind, s)?;
        Some(GlobalId {
            kind,
            region: region.to_owned(),
            n,
            tag,
        })
    }

    /// The region, number and tag of a well-formed id, borrowed (no allocation on the
    /// confirm path).
    pub fn parts(kind: IdKind, s: &str) -> Option<(&str, u64, IdTag)> {
        let rest = s.strip_prefix(kind.prefix())?;
        let (rest, tag) = rest.rsplit_once('-')?;
        let (region, n) = rest.rsplit_once('-')?;
        // One spelling per id: no leading zeros.
        if !valid_id(region)
            || n.is_empty()
            || !n.bytes().all(|b| b.is_ascii_digit())
            || n.len() > 19
            || (n.len() > 1 && n.starts_with('0'))
        {
            return None;
        }
        Some((region, n.parse().ok()?, IdTag::parse(tag)?))
    }
}

impl fmt::Display for GlobalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}-{}-{}",
            self.kind.prefix(),
            self.region,
            self.n,
            self.tag
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let key = IdKey::insecure_for_tests("eu-west");
        let id = key.format(IdKind::Order, "eu-west", 42u64);
        assert!(id.starts_with("o-eu-west-42-"), "{id}");
        assert_eq!(id.len(), "o-eu-west-42-".len() + 24);
        let g = GlobalId::parse(IdKind::Order, &id).unwrap();
        assert_eq!((g.region.as_str(), g.n), ("eu-west", 42));
        assert!(key.verifies(&g));
        let tag = key.tag(IdKind::Order, 42).to_string();
        for bad in [
            "o-eu-west-42".to_owned(),
            format!("o-eu-west-{tag}"),
            format!("h-eu-west-42-{tag}"),
            format!("o--42-{tag}"),
            format!("o-eu west-42-{tag}"),
            format!("o-eu-west-99999999999999999999-{tag}"),
            format!("o-eu-west-42-{}", &tag[1..]),
            format!("o-eu-west-42-{}", tag.to_uppercase()),
            format!("o-eu-west-042-{tag}"),
            "x".to_owned(),
        ] {
            assert_eq!(GlobalId::parse(IdKind::Order, &bad), None, "{bad}");
        }
    }

    #[test]
    fn tags_differ_by_number_kind_and_key_and_a_wrong_tag_does_not_verify() {
        let key = IdKey::insecure_for_tests("eu-west");
        let other = IdKey::insecure_for_tests("us-east");
        assert_ne!(key.tag(IdKind::Hold, 1), key.tag(IdKind::Hold, 2));
        assert_ne!(key.tag(IdKind::Hold, 1), key.tag(IdKind::Order, 1));
        assert_ne!(key.tag(IdKind::Hold, 1), other.tag(IdKind::Hold, 1));
        let forged = GlobalId::parse(IdKind::Hold, &other.format(IdKind::Hold, "eu-west", 1u64));
        assert!(!key.verifies(&forged.unwrap()));
    }
}
