//! The wire format between regions: one message per QUIC unidirectional stream,
//! `b"ALT" · version (u8) · length (u32, big-endian) · postcard(PeerMessage)`. A message is a
//! gossip frame, or a call between regions or its answer (version 5: an ask may gather quota
//! for a waiting buyer; version 4: calls carry a budget and forwarded sales; version 3:
//! frames carry each pool's demand, and a grant's answer the donor's row; version 2 lacked
//! both; version 1 carried gossip frames only).
//!
//! Frames are bounded; anything malformed — a bad magic, an unknown version, a length that
//! lies, bytes that do not decode — is an error, never a panic.

use allot_node::PeerMessage;

pub const MAGIC: &[u8; 3] = b"ALT";
pub const VERSION: u8 = 6;
pub const HEADER: usize = 8;
/// The largest frame a node sends or accepts.
pub const MAX_FRAME: usize = 8 << 20;
// The core bounds its frames by its budget; the wire must carry any frame within it.
const _: () = assert!(allot_node::DEFAULT_FRAME_BUDGET + HEADER <= MAX_FRAME);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame shorter than its header")]
    Truncated,
    #[error("not an allot frame")]
    BadMagic,
    #[error("wire version {0}, this node speaks {VERSION}")]
    Version(u8),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame length {declared} disagrees with the {actual} bytes received")]
    Length { declared: usize, actual: usize },
    #[error("undecodable frame: {0}")]
    Decode(String),
}

pub fn encode(frame: &PeerMessage) -> Result<Vec<u8>, WireError> {
    let body = postcard::to_stdvec(frame).map_err(|e| WireError::Decode(e.to_string()))?;
    if body.len() > MAX_FRAME - HEADER {
        return Err(WireError::TooLarge(body.len() + HEADER));
    }
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> Result<PeerMessage, WireError> {
    if bytes.len() > MAX_FRAME {
        return Err(WireError::TooLarge(bytes.len()));
    }
    if bytes.len() < HEADER {
        return Err(WireError::Truncated);
    }
    if &bytes[..3] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if bytes[3] != VERSION {
        return Err(WireError::Version(bytes[3]));
    }
    let declared = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    let body = &bytes[HEADER..];
    if declared != body.len() {
        return Err(WireError::Length {
            declared,
            actual: body.len(),
        });
    }
    postcard::from_bytes(body).map_err(|e| WireError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use allot_crdt::{Entry, GenesisHash, RowDelta, VersionVector};
    use allot_node::{CallId, Command, EventGossip, Exchange, GossipFrame};
    use proptest::prelude::*;

    pub(crate) fn sample() -> PeerMessage {
        let mut vv = VersionVector::new(3);
        vv.observe(0, 42);
        PeerMessage::Gossip(GossipFrame {
            events: vec![EventGossip {
                event: "rock".into(),
                genesis_hash: GenesisHash([7; 32]),
                genesis: None,
                vv,
                rows: vec![RowDelta {
                    genesis: GenesisHash([7; 32]),
                    writer: 0,
                    since: 40,
                    seq: 42,
                    entries: [(42, Entry::Consumed { pool: 0, value: 99 })]
                        .into_iter()
                        .collect(),
                }],
                meta_heads: vec![[1; 32]],
                meta_changes: vec![],
                held: vec![3, 0],
                spent: vec![99, 0],
                sale_rate_per_min: vec![60, 0],
                demand_per_min: vec![90, 0],
            }],
        })
    }

    fn sample_call() -> PeerMessage {
        PeerMessage::Exchange(Exchange::Call {
            id: CallId {
                incarnation: 2,
                n: 9,
            },
            key: None,
            command: Box::new(Command::ReadOrder {
                order: "o-us-east-1-000000000000000000000000".into(),
            }),
            budget_ms: Some(2_000),
        })
    }

    #[test]
    fn calls_round_trip() {
        let c = sample_call();
        assert_eq!(decode(&encode(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn frames_round_trip() {
        let f = sample();
        assert_eq!(decode(&encode(&f).unwrap()).unwrap(), f);
    }

    #[test]
    fn malformed_frames_are_errors() {
        let good = encode(&sample()).unwrap();
        assert_eq!(decode(&good[..5]), Err(WireError::Truncated));
        assert_eq!(decode(b"XYZ\x01\0\0\0\0"), Err(WireError::BadMagic));
        // A node of another wire version (1 carried gossip frames only; 2 had no demand in
        // its frames; 3 no deadline in calls and no forwarded sales; 4 no gathering asks; 5 no
        // spent figure in gossip) is
        // refused cleanly.
        for other in [1u8, 2, 3, 4, 5, 7] {
            let mut v = good.clone();
            v[3] = other;
            assert_eq!(decode(&v), Err(WireError::Version(other)));
        }
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            Err(WireError::Length { .. })
        ));
        assert!(matches!(
            decode(&vec![0; MAX_FRAME + 1]),
            Err(WireError::TooLarge(_))
        ));
    }

    /// The seeds of the fuzz corpus (node/server/fuzz/corpus/decode) stay decodable or
    /// refusable without panics; `ALLOT_WRITE_CORPUS=1` rewrites them.
    #[test]
    fn fuzz_corpus_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
        let good = encode(&sample()).unwrap();
        if std::env::var_os("ALLOT_WRITE_CORPUS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("valid-frame"), &good).unwrap();
            std::fs::write(dir.join("truncated"), &good[..good.len() / 2]).unwrap();
            std::fs::write(
                dir.join("empty-frame"),
                encode(&PeerMessage::Gossip(GossipFrame::default())).unwrap(),
            )
            .unwrap();
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let _ = decode(&bytes);
        }
        assert_eq!(
            decode(&std::fs::read(dir.join("valid-frame")).unwrap()).unwrap(),
            sample()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn random_bodies_behind_a_valid_header_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut b = MAGIC.to_vec();
            b.push(VERSION);
            b.extend_from_slice(&(body.len() as u32).to_be_bytes());
            b.extend_from_slice(&body);
            let _ = decode(&b);
        }

        #[test]
        fn every_truncation_or_corruption_of_a_valid_frame_is_handled(cut in 0usize..200, flip in 0usize..200, bit in 0u8..8) {
            let good = encode(&sample()).unwrap();
            let cut = cut.min(good.len());
            prop_assert!(decode(&good[..cut]).is_err() || cut == good.len());
            let mut bad = good.clone();
            let i = flip % bad.len();
            bad[i] ^= 1 << bit;
            let _ = decode(&bad);
        }
    }
}
