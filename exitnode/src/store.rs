//! The provider's record of invites it issued and consumers it authorized: the pure
//! decisions of exit negotiation. [`Store::authorize`] checks an exit request's token
//! (known, unexpired, uses left, not revoked) and hands out the consumer's inner
//! addresses; [`Store::revoke`] takes a consumer's authorization away at once. The
//! store serializes to JSON for an atomic state file ([`crate::state`]); the time is
//! an argument (Unix seconds), never read here.

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Consumers get IPv4 addresses from 100.64.0.0/10 (RFC 6598) below 100.127.0.0;
/// .0.0 and .0.1 are not handed out (network, provider).
pub const INNER_V4_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// The provider's own address inside the tunnel (its resolver, its in-tunnel request
/// port).
pub const PROVIDER_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// Consumer addresses: 100.64.0.0 up to 100.126.255.255.
const INNER_V4_SIZE: u32 = 63 << 16;
/// Most invites recorded at once (issued and not yet forgotten).
pub const MAX_INVITES: usize = 65_534;

/// An invite the provider issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// The token, hex.
    pub token: String,
    /// Expiry, Unix seconds.
    pub expires: u64,
    /// Consumers it may still admit.
    pub uses_left: u16,
    /// Revoked before use.
    pub revoked: bool,
}

/// A consumer the provider authorized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    /// Its WireGuard public key, base64 (as `wg` prints it).
    pub wg_key: String,
    /// Its inner IPv4 address.
    pub inner_v4: Ipv4Addr,
    /// Its inner IPv6 address, when the provider offers IPv6.
    pub inner_v6: Option<Ipv6Addr>,
    /// The invite token it came with, hex.
    pub token: String,
}

/// What an authorized consumer is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Its inner IPv4 address.
    pub inner_v4: Ipv4Addr,
    /// Its inner IPv6 address, if any.
    pub inner_v6: Option<Ipv6Addr>,
}

/// Why an exit request is refused (sent back to the consumer as is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No invite with this token was issued here (or it was signed by someone else).
    #[error("this provider issued no such invite")]
    UnknownToken,
    /// The invite is past its expiry.
    #[error("the invite has expired; ask the provider for a new one")]
    Expired,
    /// Every use of the invite is taken.
    #[error("the invite has been used up; ask the provider for a new one")]
    UsedUp,
    /// The invite or the consumer was revoked.
    #[error("the invite or this consumer was revoked by the provider")]
    Revoked,
    /// No inner address is left.
    #[error("the provider has no inner address left")]
    Full,
    /// The request is in an older negotiation format, without proof of key ownership.
    #[error("the request is in an outdated negotiation format: upgrade portdistrict")]
    Outdated,
    /// The request's proof was not made with the private key of the key it registers.
    #[error("the request does not prove ownership of the WireGuard key it registers")]
    BadProof,
    /// The provider could not decide now (its state is unreadable or unwritable for a
    /// moment); nothing changed.
    #[error("the provider cannot record the request right now; try again later")]
    Unavailable,
}

impl Refusal {
    /// Every refusal.
    pub const ALL: [Refusal; 8] = [
        Refusal::UnknownToken,
        Refusal::Expired,
        Refusal::UsedUp,
        Refusal::Revoked,
        Refusal::Full,
        Refusal::Outdated,
        Refusal::BadProof,
        Refusal::Unavailable,
    ];
}

/// Invites and consumers of one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// Issued invites.
    pub invites: Vec<Issued>,
    /// Authorized consumers.
    pub consumers: Vec<Consumer>,
    /// Consumer keys revoked (refused even with a valid invite).
    pub revoked: Vec<String>,
    /// The /64 consumers' IPv6 addresses come from, if IPv6 is offered.
    pub v6_prefix: Option<Ipv6Addr>,
    /// The endpoints `exit serve --endpoint` announced: invites carry them unless
    /// `exit invite --endpoint` names others.
    #[serde(default)]
    pub endpoints: Vec<std::net::SocketAddr>,
    /// The exit channel's TCP port `exit serve` last listened on: invites carry it.
    #[serde(default)]
    pub channel_port: Option<u16>,
}

impl Store {
    /// Records a newly issued invite; `None` when [`MAX_INVITES`] are recorded.
    pub fn issue(&mut self, token: &[u8; 16], expires: u64, uses: u16) -> Option<()> {
        if self.invites.len() >= MAX_INVITES {
            return None;
        }
        self.invites.push(Issued {
            token: hex(token),
            expires,
            uses_left: uses,
            revoked: false,
        });
        Some(())
    }

    /// The first token that `matches` (e.g. whose exit channel token id is the one
    /// asked for): an issued invite's, or that of the invite an authorized consumer
    /// came with (which may be spent, expired or forgotten: the consumer asking again
    /// gets its grant again).
    pub fn token_by<F: Fn(&[u8; 16]) -> bool>(&self, matches: F) -> Option<[u8; 16]> {
        let tokens = self
            .invites
            .iter()
            .map(|i| &i.token)
            .chain(self.consumers.iter().map(|c| &c.token));
        for t in tokens {
            if let Some(b) = unhex16(t) {
                if matches(&b) {
                    return Some(b);
                }
            }
        }
        None
    }

    /// Decides an exit request from the consumer with WireGuard key `wg_key` presenting
    /// `token` at `now`. The same consumer asking again with the same token gets its
    /// grant again (a retransmitted request), without using up another use.
    pub fn authorize(
        &mut self,
        now: u64,
        token: &[u8; 16],
        wg_key: &str,
    ) -> Result<Grant, Refusal> {
        let token = hex(token);
        if self.revoked.iter().any(|k| k == wg_key) {
            return Err(Refusal::Revoked);
        }
        if let Some(c) = self
            .consumers
            .iter()
            .find(|c| c.wg_key == wg_key && c.token == token)
        {
            return Ok(Grant {
                inner_v4: c.inner_v4,
                inner_v6: c.inner_v6,
            });
        }
        let invite = self
            .invites
            .iter()
            .position(|i| i.token == token)
            .ok_or(Refusal::UnknownToken)?;
        let i = &self.invites[invite];
        if i.revoked {
            return Err(Refusal::Revoked);
        }
        if now >= i.expires {
            return Err(Refusal::Expired);
        }
        if i.uses_left == 0 {
            return Err(Refusal::UsedUp);
        }
        let (inner_v4, inner_v6) = self.next_addresses().ok_or(Refusal::Full)?;
        self.invites[invite].uses_left -= 1;
        // A consumer key comes with one authorization: a new token replaces the old.
        self.consumers.retain(|c| c.wg_key != wg_key);
        self.consumers.push(Consumer {
            wg_key: wg_key.to_owned(),
            inner_v4,
            inner_v6,
            token,
        });
        Ok(Grant { inner_v4, inner_v6 })
    }

    /// Revokes the consumer with WireGuard key `wg_key`: its authorization goes at
    /// once, and it cannot come back with another invite. False if it was unknown.
    pub fn revoke(&mut self, wg_key: &str) -> bool {
        let before = self.consumers.len();
        self.consumers.retain(|c| c.wg_key != wg_key);
        let known = self.consumers.len() != before;
        if !self.revoked.iter().any(|k| k == wg_key) {
            self.revoked.push(wg_key.to_owned());
        }
        known
    }

    /// The lowest free inner addresses (IPv4 from .0.2 up; IPv6 prefix + the same
    /// host number).
    fn next_addresses(&self) -> Option<(Ipv4Addr, Option<Ipv6Addr>)> {
        let base = u32::from(INNER_V4_BASE);
        let host = (2..INNER_V4_SIZE).find(|h| {
            let a = Ipv4Addr::from(base + h);
            self.consumers.iter().all(|c| c.inner_v4 != a)
        })?;
        let v4 = Ipv4Addr::from(base + host);
        let v6 = self
            .v6_prefix
            .map(|p| Ipv6Addr::from(u128::from(p) & !0xffff_ffff_ffff_ffff | u128::from(host)));
        Some((v4, v6))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 16 bytes of a token written by [`hex`].
fn unhex16(s: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: [u8; 16] = [1; 16];
    const T2: [u8; 16] = [2; 16];

    fn store() -> Store {
        let mut s = Store {
            v6_prefix: Some("fd7a:115c:a1e0::".parse().unwrap()),
            ..Store::default()
        };
        assert_eq!(s.issue(&T1, 1000, 1), Some(()));
        assert_eq!(s.issue(&T2, 1000, 2), Some(()));
        s
    }

    #[test]
    fn tokens_are_found_among_invites_and_consumers() {
        let mut s = store();
        s.authorize(10, &T1, "keyA").unwrap();
        assert_eq!(s.token_by(|t| *t == T2), Some(T2));
        // The invite forgotten, its consumer still finds it.
        s.invites.retain(|i| i.token != hex(&T1));
        assert_eq!(s.token_by(|t| *t == T1), Some(T1));
        assert_eq!(s.token_by(|t| *t == [3; 16]), None);
        // A store written by the previous version (with negotiation identities) loads.
        let old = r#"{"invites": [{"token": "01010101010101010101010101010101",
            "negotiation_key": "x", "negotiation_addr": "100.127.0.2", "expires": 5,
            "uses_left": 1, "revoked": false}], "consumers": [], "revoked": [],
            "v6_prefix": null}"#;
        let old: Store = serde_json::from_str(old).unwrap();
        assert_eq!(old.invites[0].token, hex(&T1));
    }

    #[test]
    fn a_single_use_invite_admits_one_consumer_and_a_retry_is_idempotent() {
        let mut s = store();
        let g = s.authorize(10, &T1, "keyA").unwrap();
        assert_eq!(g.inner_v4, Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(g.inner_v6, Some("fd7a:115c:a1e0::2".parse().unwrap()));
        assert_eq!(s.authorize(11, &T1, "keyA"), Ok(g), "retransmitted request");
        assert_eq!(s.authorize(12, &T1, "keyB"), Err(Refusal::UsedUp));
    }

    #[test]
    fn two_consumers_get_distinct_addresses() {
        let mut s = store();
        let a = s.authorize(10, &T2, "keyA").unwrap();
        let b = s.authorize(10, &T2, "keyB").unwrap();
        assert_ne!(a.inner_v4, b.inner_v4);
        assert_ne!(a.inner_v6, b.inner_v6);
        assert_eq!(s.authorize(10, &T2, "keyC"), Err(Refusal::UsedUp));
    }

    #[test]
    fn expired_unknown_and_revoked_are_refused() {
        let mut s = store();
        assert_eq!(s.authorize(1000, &T1, "keyA"), Err(Refusal::Expired));
        assert_eq!(
            s.authorize(10, &[3; 16], "keyA"),
            Err(Refusal::UnknownToken)
        );
        s.authorize(10, &T2, "keyA").unwrap();
        assert!(s.revoke("keyA"));
        assert!(s.consumers.is_empty());
        assert_eq!(s.authorize(11, &T2, "keyA"), Err(Refusal::Revoked));
        assert!(!s.revoke("nobody"));
        s.invites[0].revoked = true;
        assert_eq!(s.authorize(10, &T1, "keyB"), Err(Refusal::Revoked));
        for r in Refusal::ALL {
            assert!(!r.to_string().is_empty());
        }
    }

    #[test]
    fn freed_addresses_are_reused_and_the_store_round_trips() {
        let mut s = store();
        let a = s.authorize(10, &T2, "keyA").unwrap();
        s.revoke("keyA");
        let b = s.authorize(10, &T2, "keyB").unwrap();
        assert_eq!(a.inner_v4, b.inner_v4);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Store>(&json).unwrap(), s);
    }

    #[test]
    fn without_ipv6_no_ipv6_address() {
        let mut s = store();
        s.v6_prefix = None;
        assert_eq!(s.authorize(10, &T1, "keyA").unwrap().inner_v6, None);
    }
}
