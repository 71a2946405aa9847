//! The peer store and its trust lifecycle (pure: values in, values out; the time is
//! an argument). One enum, [`TrustState`], persisted by its constant names:
//!
//! ```text
//! add bundle -> SEEN --verify (fingerprint matches)--> VERIFIED --trust--> TRUSTED
//!                         TRUSTED --demote--> VERIFIED
//!         any --revoke--> REVOKED (stays: a revoked identity cannot be added,
//!                                   verified or trusted again until forgotten)
//!         any --forget--> (gone)
//! ```
//!
//! A refused transition changes nothing and says what to do instead.

use crate::identity::PublicIdentity;
use serde::{Deserialize, Serialize};

/// Where a peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrustState {
    /// Its bundle was added; nothing checked yet.
    #[serde(rename = "SEEN")]
    Seen,
    /// Its fingerprint was compared out of band and matched.
    #[serde(rename = "VERIFIED")]
    Verified,
    /// Trusted: it may read our records and we connect to its devices.
    #[serde(rename = "TRUSTED")]
    Trusted,
    /// Revoked: cut off; it stays on record so that it cannot come back unnoticed.
    #[serde(rename = "REVOKED")]
    Revoked,
}

impl TrustState {
    /// Every state.
    pub const ALL: [TrustState; 4] = [
        TrustState::Seen,
        TrustState::Verified,
        TrustState::Trusted,
        TrustState::Revoked,
    ];

    /// The persisted and displayed name.
    pub const fn name(self) -> &'static str {
        match self {
            TrustState::Seen => "SEEN",
            TrustState::Verified => "VERIFIED",
            TrustState::Trusted => "TRUSTED",
            TrustState::Revoked => "REVOKED",
        }
    }
}

impl std::fmt::Display for TrustState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One peer identity on record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its node ID.
    pub node_id: String,
    /// Its public identity (namespace, master and ECDH keys).
    pub identity: PublicIdentity,
    /// Where it stands.
    pub state: TrustState,
    /// When it was added (Unix seconds).
    pub added: u64,
    /// When its state last changed.
    pub changed: u64,
}

/// Why a store operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// No peer matches.
    #[error("no peer {0:?} on record: see `portdistrict peer list`")]
    Unknown(String),
    /// Several peers match a prefix.
    #[error("{0:?} matches several peers: give more of the node ID")]
    Ambiguous(String),
    /// Our own identity.
    #[error("that bundle is our own identity")]
    Own,
    /// The node is revoked.
    #[error("peer {0} is REVOKED: `portdistrict peer forget {0}` first if you really mean to start over")]
    Revoked(String),
    /// A bundle for a known node ID that differs from the one on record.
    #[error("peer {0} is on record with a different namespace or ECDH key: `portdistrict peer forget {0}` first, after checking with its owner")]
    Conflict(String),
    /// The fingerprint does not match.
    #[error("fingerprint mismatch for {node}: on record {actual}, given {given}; the bundle is not the one its owner sent — do not trust it")]
    Fingerprint {
        /// The node.
        node: String,
        /// What the record gives.
        actual: String,
        /// What the user typed.
        given: String,
    },
    /// Trusting without verifying.
    #[error("peer {0} is SEEN, not VERIFIED: compare fingerprints first (`portdistrict peer verify {0} --fingerprint FP`)")]
    NotVerified(String),
    /// Demoting what is not trusted.
    #[error("peer {0} is {1}, not TRUSTED: nothing to demote")]
    NotTrusted(String, TrustState),
}

/// What `add` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new peer, SEEN.
    New,
    /// Already on record with this very identity; its state is unchanged.
    Known(TrustState),
}

/// All peers on record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStore {
    /// Sorted by node ID.
    pub peers: Vec<Peer>,
}

/// Normalizes a typed fingerprint: lowercase, without separators or spaces.
fn fingerprint_key(fp: &str) -> String {
    fp.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl PeerStore {
    /// The index of the peer `who` names: a node ID, a unique prefix of one (at least
    /// 6 characters), or a namespace.
    pub fn find(&self, who: &str) -> Result<usize, TrustError> {
        if let Some(i) = self
            .peers
            .iter()
            .position(|p| p.node_id == who || p.identity.namespace == who)
        {
            return Ok(i);
        }
        let hits: Vec<usize> = (0..self.peers.len())
            .filter(|&i| who.len() >= 6 && self.peers[i].node_id.starts_with(who))
            .collect();
        match hits.as_slice() {
            [i] => Ok(*i),
            [] => Err(TrustError::Unknown(who.to_owned())),
            _ => Err(TrustError::Ambiguous(who.to_owned())),
        }
    }

    /// Adds the identity of a verified bundle (`own` is our own node ID).
    pub fn add(&mut self, id: &PublicIdentity, own: &str, now: u64) -> Result<Added, TrustError> {
        let node = id.node_id();
        if node == own {
            return Err(TrustError::Own);
        }
        if let Some(p) = self.peers.iter().find(|p| p.node_id == node) {
            if p.state == TrustState::Revoked {
                return Err(TrustError::Revoked(node));
            }
            if &p.identity != id {
                return Err(TrustError::Conflict(node));
            }
            return Ok(Added::Known(p.state));
        }
        self.peers.push(Peer {
            node_id: node,
            identity: id.clone(),
            state: TrustState::Seen,
            added: now,
            changed: now,
        });
        self.peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(Added::New)
    }

    /// Marks `who` VERIFIED when `fingerprint` matches (a TRUSTED peer stays TRUSTED).
    pub fn verify(
        &mut self,
        who: &str,
        fingerprint: &str,
        now: u64,
    ) -> Result<TrustState, TrustError> {
        let i = self.find(who)?;
        let p = &mut self.peers[i];
        if p.state == TrustState::Revoked {
            return Err(TrustError::Revoked(p.node_id.clone()));
        }
        let actual = p.identity.fingerprint();
        if fingerprint_key(&actual) != fingerprint_key(fingerprint) {
            return Err(TrustError::Fingerprint {
                node: p.node_id.clone(),
                actual,
                given: fingerprint.to_owned(),
            });
        }
        if p.state == TrustState::Seen {
            p.state = TrustState::Verified;
            p.changed = now;
        }
        Ok(p.state)
    }

    /// Marks a VERIFIED peer TRUSTED.
    pub fn trust(&mut self, who: &str, now: u64) -> Result<(), TrustError> {
        let i = self.find(who)?;
        let p = &mut self.peers[i];
        match p.state {
            TrustState::Revoked => Err(TrustError::Revoked(p.node_id.clone())),
            TrustState::Seen => Err(TrustError::NotVerified(p.node_id.clone())),
            TrustState::Trusted => Ok(()),
            TrustState::Verified => {
                p.state = TrustState::Trusted;
                p.changed = now;
                Ok(())
            }
        }
    }

    /// TRUSTED -> VERIFIED.
    pub fn demote(&mut self, who: &str, now: u64) -> Result<(), TrustError> {
        let i = self.find(who)?;
        let p = &mut self.peers[i];
        if p.state != TrustState::Trusted {
            return Err(TrustError::NotTrusted(p.node_id.clone(), p.state));
        }
        p.state = TrustState::Verified;
        p.changed = now;
        Ok(())
    }

    /// Any state -> REVOKED.
    pub fn revoke(&mut self, who: &str, now: u64) -> Result<(), TrustError> {
        let i = self.find(who)?;
        let p = &mut self.peers[i];
        if p.state != TrustState::Revoked {
            p.state = TrustState::Revoked;
            p.changed = now;
        }
        Ok(())
    }

    /// Removes `who` from the store; returns what it was.
    pub fn forget(&mut self, who: &str) -> Result<Peer, TrustError> {
        let i = self.find(who)?;
        Ok(self.peers.remove(i))
    }

    /// The peers that may read our records and whose devices we connect to.
    pub fn trusted(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| p.state == TrustState::Trusted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Seed;

    fn id(b: u8, ns: &str) -> PublicIdentity {
        Seed::from_bytes([b; 32]).public(ns).unwrap()
    }

    #[test]
    fn the_lifecycle_goes_seen_verified_trusted_and_back() {
        let mut s = PeerStore::default();
        let bob = id(2, "bob.pd.test");
        let node = bob.node_id();
        assert_eq!(s.add(&bob, "me", 10), Ok(Added::New));
        assert_eq!(s.add(&bob, "me", 11), Ok(Added::Known(TrustState::Seen)));
        assert_eq!(
            s.trust(&node, 12),
            Err(TrustError::NotVerified(node.clone()))
        );
        let fp = bob.fingerprint();
        // Separators and case do not matter; a wrong fingerprint changes nothing.
        let wrong = fp.replace(&fp[..1], if fp.starts_with('a') { "b" } else { "a" });
        assert!(matches!(
            s.verify(&node, &wrong, 13),
            Err(TrustError::Fingerprint { .. })
        ));
        assert_eq!(s.peers[0].state, TrustState::Seen);
        let typed = fp.replace('-', " ").to_uppercase();
        assert_eq!(s.verify(&node[..8], &typed, 14), Ok(TrustState::Verified));
        s.trust("bob.pd.test", 15).unwrap();
        assert_eq!(s.trusted().count(), 1);
        assert_eq!(s.verify(&node, &fp, 16), Ok(TrustState::Trusted));
        s.demote(&node, 17).unwrap();
        assert_eq!(s.peers[0].state, TrustState::Verified);
        assert_eq!(
            s.demote(&node, 18),
            Err(TrustError::NotTrusted(node.clone(), TrustState::Verified))
        );
        assert_eq!(s.peers[0].changed, 17);
    }

    #[test]
    fn revoked_stays_revoked_until_forgotten() {
        let mut s = PeerStore::default();
        let bob = id(2, "bob.pd.test");
        let node = bob.node_id();
        s.add(&bob, "me", 1).unwrap();
        s.revoke(&node, 2).unwrap();
        assert_eq!(s.add(&bob, "me", 3), Err(TrustError::Revoked(node.clone())));
        assert_eq!(s.trust(&node, 3), Err(TrustError::Revoked(node.clone())));
        assert!(s.verify(&node, &bob.fingerprint(), 3).is_err());
        assert_eq!(s.forget(&node).unwrap().state, TrustState::Revoked);
        assert_eq!(s.add(&bob, "me", 4), Ok(Added::New));
    }

    #[test]
    fn conflicts_own_identity_and_lookups() {
        let mut s = PeerStore::default();
        let bob = id(2, "bob.pd.test");
        s.add(&bob, "me", 1).unwrap();
        let moved = id(2, "bob.example.org");
        assert_eq!(
            s.add(&moved, "me", 2),
            Err(TrustError::Conflict(bob.node_id()))
        );
        assert_eq!(s.add(&bob, &bob.node_id(), 2), Err(TrustError::Own));
        assert_eq!(s.find("nobody"), Err(TrustError::Unknown("nobody".into())));
        assert_eq!(
            s.find(&bob.node_id()[..3]),
            Err(TrustError::Unknown(bob.node_id()[..3].into()))
        );
        // Two peers sharing a prefix: ambiguous below the point where they differ.
        let carol = id(3, "carol.pd.test");
        s.add(&carol, "me", 3).unwrap();
        let (a, b) = (bob.node_id(), carol.node_id());
        let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
        if common >= 6 {
            assert_eq!(
                s.find(&a[..common]),
                Err(TrustError::Ambiguous(a[..common].into()))
            );
        }
        assert_eq!(s.find(&a[..common.max(6) + 1]), Ok(s.find(&a).unwrap()));
    }

    #[test]
    fn states_persist_by_their_constant_names() {
        for st in TrustState::ALL {
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.name()));
            assert_eq!(serde_json::from_str::<TrustState>(&json).unwrap(), st);
        }
        assert!(serde_json::from_str::<TrustState>("\"trusted\"").is_err());
    }
}
