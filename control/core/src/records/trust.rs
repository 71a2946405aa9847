//! The trust record: an identity's TRUSTED peers, signed by the master key and sealed
//! to its own devices only.
//!
//! ```text
//! kind 3 | version | issued u64 | expires u64 | namespace str | count u16 (<= 1024)
//! | count x (namespace str | master key [32] | ECDH key [32]) | signature [64]
//! ```

use super::codec::{check_signed, finish, head, KIND_TRUST};
use super::{trust_name, RecordError};
use crate::codec::Reader;
use crate::identity::{check_namespace, PublicIdentity};
use ring::signature::Ed25519KeyPair;

/// Most peers in one trust record.
pub const MAX_TRUSTED: usize = 1024;

/// The trust record: the identity's TRUSTED peers, for its own devices only (sealed
/// to them), so that devices without the identity's seed know whom to connect to and
/// whom to publish for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRecord {
    /// The identity's namespace.
    pub namespace: String,
    /// Issued, Unix seconds.
    pub issued: u64,
    /// Expires, Unix seconds.
    pub expires: u64,
    /// The trusted peers.
    pub peers: Vec<PublicIdentity>,
}

impl TrustRecord {
    /// The signed bytes (signature by the master key).
    pub fn sign(&self, master: &Ed25519KeyPair) -> Result<Vec<u8>, RecordError> {
        if self.peers.len() > MAX_TRUSTED {
            return Err(RecordError::TooMany("trusted peers"));
        }
        let mut b = head(KIND_TRUST, self.issued, self.expires);
        b.str(&self.namespace)
            .u16(u16::try_from(self.peers.len()).expect("<= 1024"));
        for p in &self.peers {
            b.str(&p.namespace).bytes(&p.master).bytes(&p.ecdh);
        }
        Ok(finish(b, &trust_name(&self.namespace), master))
    }

    /// Parses and verifies signed bytes found at `at` against `master`, at `now`.
    pub fn verify(
        bytes: &[u8],
        at: &str,
        master: &[u8; 32],
        now: u64,
    ) -> Result<TrustRecord, RecordError> {
        let (body, kind) = check_signed(bytes, at, master)?;
        if kind != KIND_TRUST {
            return Err(RecordError::Malformed("not a trust record"));
        }
        let mut r = Reader::new(body);
        let (issued, expires) = (r.u64("issued")?, r.u64("expires")?);
        let namespace = r.str("namespace")?;
        let n = usize::from(r.u16("peer count")?);
        if n > MAX_TRUSTED {
            return Err(RecordError::TooMany("trusted peers"));
        }
        let mut peers = Vec::with_capacity(n);
        for _ in 0..n {
            let ns = r.str("peer namespace")?;
            check_namespace(&ns)
                .map_err(|_| RecordError::Malformed("a peer namespace is not a DNS name"))?;
            peers.push(PublicIdentity {
                namespace: ns,
                master: r.array("master key")?,
                ecdh: r.array("ECDH key")?,
            });
        }
        if !r.is_empty() {
            return Err(RecordError::Malformed("bytes after the last peer"));
        }
        if trust_name(&namespace) != at {
            return Err(RecordError::WrongName {
                found: trust_name(&namespace),
                at: at.to_owned(),
            });
        }
        if now >= expires {
            return Err(RecordError::Expired(expires));
        }
        Ok(TrustRecord {
            namespace,
            issued,
            expires,
            peers,
        })
    }
}
