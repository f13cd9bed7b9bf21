//! Hold and order ids. Each embeds the region that owns it, so any region can tell where to
//! send a request about it without a lookup: `h-<region>-<n>`, `o-<region>-<n>`.

use std::fmt;

use allot_crdt::valid_id;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// A parsed hold or order id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GlobalId {
    pub kind: IdKind,
    pub region: String,
    pub n: u64,
}

impl GlobalId {
    pub fn parse(kind: IdKind, s: &str) -> Option<GlobalId> {
        let rest = s.strip_prefix(kind.prefix())?;
        let (region, n) = rest.rsplit_once('-')?;
        if !valid_id(region)
            || n.is_empty()
            || !n.bytes().all(|b| b.is_ascii_digit())
            || n.len() > 19
        {
            return None;
        }
        Some(GlobalId {
            kind,
            region: region.to_owned(),
            n: n.parse().ok()?,
        })
    }
}

impl fmt::Display for GlobalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}-{}", self.kind.prefix(), self.region, self.n)
    }
}

pub fn format_id(kind: IdKind, region: &str, n: u64) -> String {
    GlobalId {
        kind,
        region: region.to_owned(),
        n,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = format_id(IdKind::Order, "eu-west", 42);
        assert_eq!(id, "o-eu-west-42");
        assert_eq!(
            GlobalId::parse(IdKind::Order, &id).unwrap().region,
            "eu-west"
        );
        for bad in [
            "o-eu-west-",
            "h-eu-west-1",
            "o--1",
            "o-eu west-1",
            "o-eu-west-99999999999999999999",
            "x",
        ] {
            assert_eq!(GlobalId::parse(IdKind::Order, bad), None, "{bad}");
        }
    }
}
