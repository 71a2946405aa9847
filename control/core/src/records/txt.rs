//! TXT records: an envelope as base64url in chunks of [`CHUNK`] characters, each
//! prefixed `pd1 I/N ` and split into strings of at most 255 bytes; reassembled in any
//! order, ignoring other TXT records at the name.

use super::{RecordError, CHUNK};

/// The TXT records (each a list of strings of at most 255 bytes) that carry
/// `envelope`: base64url in chunks of [`CHUNK`] characters, each prefixed `pd1 I/N `.
pub fn to_txt(envelope: &[u8]) -> Vec<Vec<String>> {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(envelope);
    let chunks: Vec<&str> = text
        .as_bytes()
        .chunks(CHUNK)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    let n = chunks.len().max(1);
    (0..n)
        .map(|i| {
            let s = format!("pd1 {}/{n} {}", i + 1, chunks.get(i).copied().unwrap_or(""));
            s.as_bytes()
                .chunks(255)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect()
        })
        .collect()
}

/// Puts an envelope back together from the TXT records found at a name (in any
/// order; each record's strings concatenated).
pub fn from_txt(records: &[Vec<String>]) -> Result<Vec<u8>, RecordError> {
    use base64::Engine as _;
    let mut parts: Vec<(usize, usize, String)> = Vec::new();
    for rec in records {
        let joined: String = rec.concat();
        let Some(rest) = joined.strip_prefix("pd1 ") else {
            continue; // somebody else's TXT record at this name
        };
        let (idx, payload) = rest
            .split_once(' ')
            .ok_or(RecordError::Chunks("no index"))?;
        let (i, n) = idx
            .split_once('/')
            .ok_or(RecordError::Chunks("bad index"))?;
        let (i, n): (usize, usize) = (
            i.parse().map_err(|_| RecordError::Chunks("bad index"))?,
            n.parse().map_err(|_| RecordError::Chunks("bad index"))?,
        );
        if i == 0 || i > n || n > 64 {
            return Err(RecordError::Chunks("index out of range"));
        }
        parts.push((i, n, payload.to_owned()));
    }
    let Some(&(_, n, _)) = parts.first() else {
        return Err(RecordError::Chunks("no portdistrict record at this name"));
    };
    if parts.iter().any(|p| p.1 != n) {
        return Err(RecordError::Chunks("chunks of different records"));
    }
    parts.sort_by_key(|p| p.0);
    parts.dedup_by_key(|p| p.0);
    if parts.len() != n {
        return Err(RecordError::Chunks("a chunk is missing"));
    }
    let text: String = parts.into_iter().map(|p| p.2).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| RecordError::Chunks("not base64url"))
}
