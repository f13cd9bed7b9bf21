//! The wire format between regions: one gossip frame per QUIC unidirectional stream,
//! `b"ALT" · version (u8) · length (u32, big-endian) · postcard(GossipFrame)`.
//!
//! Frames are bounded; anything malformed — a bad magic, an unknown version, a length that
//! lies, bytes that do not decode — is an error, never a panic.

use allot_node::GossipFrame;

pub const MAGIC: &[u8; 3] = b"ALT";
pub const VERSION: u8 = 1;
pub const HEADER: usize = 8;
/// The largest frame a node sends or accepts.
pub const MAX_FRAME: usize = 8 << 20;

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

pub fn encode(frame: &GossipFrame) -> Result<Vec<u8>, WireError> {
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

pub fn decode(bytes: &[u8]) -> Result<GossipFrame, WireError> {
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
        return Err(WireError::Length { declared, actual: body.len() });
    }
    postcard::from_bytes(body).map_err(|e| WireError::Decode(e.to_string()))
}
