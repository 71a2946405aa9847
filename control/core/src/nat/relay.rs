//! The relay's decisions, without sockets or a clock. An allocation is two UDP ports
//! on the facilitator, one per node of a pair. A node binds its source address to its
//! port by sending [`bind_datagram`] with its token from its dataplane socket (so the
//! NAT mapping bound is the one its WireGuard traffic uses); after that, what arrives
//! on its port from that source goes out of the other port to the other node's bound
//! source, byte for byte. Anything else is dropped and counted: the relay never
//! decrypts and forwards only between the two registered sources.

use portdistrict_wg::PublicKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The magic of a bind datagram (never the start of a WireGuard message, whose first
/// byte is 1 to 4).
pub const BIND_MAGIC: &[u8; 4] = b"PDRB";
/// The length of a bind datagram: magic, version, token.
pub const BIND_LEN: usize = 4 + 1 + 16;

/// The datagram that binds the sender's source to the port whose token it carries.
#[must_use]
pub fn bind_datagram(token: &[u8; 16]) -> [u8; BIND_LEN] {
    let mut d = [0u8; BIND_LEN];
    d[..4].copy_from_slice(BIND_MAGIC);
    d[4] = 1;
    d[5..].copy_from_slice(token);
    d
}

/// The relay's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Allocations at most.
    pub max_allocations: usize,
    /// Bytes per second one allocation forwards (both directions together); a burst
    /// of one second's worth.
    pub bytes_per_second: u64,
    /// An allocation that forwarded nothing for this long is freed.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_allocations: 64,
            bytes_per_second: 25_000_000,
            idle: Duration::from_secs(120),
        }
    }
}

/// What to do with one datagram that arrived on a relay port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it unchanged out of port `from_port` to `to`.
    Forward {
        /// The other side's port.
        from_port: u16,
        /// The other side's bound source.
        to: SocketAddr,
    },
    /// A bind: the sender's source is now the side of the node with this key
    /// (nothing to send; the facilitator also learns the address as one of the
    /// node's mappings).
    Bound {
        /// The node whose side it is.
        key: PublicKey,
    },
    /// Dropped (counted under the reason in [`RelayStats`]).
    Drop,
}

/// Counters of the relay.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams forwarded.
    pub forwarded: u64,
    /// Bytes forwarded.
    pub forwarded_bytes: u64,
    /// Binds accepted.
    pub bound: u64,
    /// Datagrams from a source that is not the port's bound one (or a bind with a
    /// wrong token).
    pub unregistered: u64,
    /// Datagrams from the bound source while the other side has not bound yet.
    pub unbound_peer: u64,
    /// Datagrams over the allocation's rate.
    pub rate_limited: u64,
    /// Datagrams to a port that is no allocation's (a freed one).
    pub unknown_port: u64,
    /// Allocations freed for idleness.
    pub expired: u64,
    /// Allocations refused because all were in use.
    pub full: u64,
}

/// One side of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    /// The node.
    pub key: PublicKey,
    /// Its port on the relay.
    pub port: u16,
    /// Its bind secret.
    pub token: [u8; 16],
    /// Its bound source.
    pub source: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
struct Allocation {
    sides: [Side; 2],
    last: Instant,
    budget: u64,
    refilled: Instant,
}

/// The allocations (see the module documentation).
#[derive(Debug, Clone)]
pub struct Relay {
    limits: Limits,
    allocations: Vec<Allocation>,
    by_port: HashMap<u16, usize>,
    /// What happened so far.
    pub stats: RelayStats,
}

impl Relay {
    /// No allocations.
    #[must_use]
    pub fn new(limits: Limits) -> Relay {
        Relay {
            limits,
            allocations: Vec::new(),
            by_port: HashMap::new(),
            stats: RelayStats::default(),
        }
    }

    /// The allocation of the pair `a`, `b` (either order): its two sides, `a`'s first.
    #[must_use]
    pub fn pair(&self, a: &PublicKey, b: &PublicKey) -> Option<[Side; 2]> {
        self.allocations.iter().find_map(|al| {
            let [x, y] = al.sides;
            if (x.key, y.key) == (*a, *b) {
                Some([x, y])
            } else if (x.key, y.key) == (*b, *a) {
                Some([y, x])
            } else {
                None
            }
        })
    }

    /// Whether another allocation fits.
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.allocations.len() < self.limits.max_allocations
    }

    /// Records a new allocation for sides `a` and `b` (ports the shell has bound,
    /// tokens it drew). False (counted) when full or a port is taken.
    pub fn insert(&mut self, now: Instant, a: Side, b: Side) -> bool {
        if !self.has_room()
            || self.by_port.contains_key(&a.port)
            || self.by_port.contains_key(&b.port)
            || a.port == b.port
        {
            self.stats.full += 1;
            return false;
        }
        let i = self.allocations.len();
        self.allocations.push(Allocation {
            sides: [a, b],
            last: now,
            budget: self.limits.bytes_per_second,
            refilled: now,
        });
        self.by_port.insert(a.port, i);
        self.by_port.insert(b.port, i);
        true
    }

    /// Decides what to do with `datagram` that came from `from` to relay port `port`.
    pub fn datagram(
        &mut self,
        now: Instant,
        port: u16,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Verdict {
        let Some(&i) = self.by_port.get(&port) else {
            self.stats.unknown_port += 1;
            return Verdict::Drop;
        };
        let limits = self.limits;
        let al = &mut self.allocations[i];
        let me = usize::from(al.sides[1].port == port);
        if datagram.len() == BIND_LEN && datagram.starts_with(BIND_MAGIC) {
            if datagram[4] == 1 && datagram[5..] == al.sides[me].token {
                al.sides[me].source = Some(from);
                al.last = now;
                self.stats.bound += 1;
                return Verdict::Bound {
                    key: al.sides[me].key,
                };
            }
            self.stats.unregistered += 1;
            return Verdict::Drop;
        }
        if al.sides[me].source != Some(from) {
            self.stats.unregistered += 1;
            return Verdict::Drop;
        }
        let other = al.sides[1 - me];
        let Some(to) = other.source else {
            self.stats.unbound_peer += 1;
            return Verdict::Drop;
        };
        let elapsed = now.saturating_duration_since(al.refilled);
        if elapsed >= Duration::from_millis(10) {
            let earned =
                (u128::from(limits.bytes_per_second) * elapsed.as_micros() / 1_000_000) as u64;
            al.budget = (al.budget.saturating_add(earned)).min(limits.bytes_per_second);
            al.refilled = now;
        }
        let n = datagram.len() as u64;
        if al.budget < n {
            self.stats.rate_limited += 1;
            return Verdict::Drop;
        }
        al.budget -= n;
        al.last = now;
        self.stats.forwarded += 1;
        self.stats.forwarded_bytes += n;
        Verdict::Forward {
            from_port: other.port,
            to,
        }
    }

    /// Frees the allocations idle for longer than the limit; returns their ports (the
    /// shell closes those sockets).
    pub fn expire(&mut self, now: Instant) -> Vec<u16> {
        let idle = self.limits.idle;
        let mut freed = Vec::new();
        let before = self.allocations.len();
        self.allocations.retain(|al| {
            let keep = now.saturating_duration_since(al.last) <= idle;
            if !keep {
                freed.extend(al.sides.iter().map(|s| s.port));
            }
            keep
        });
        self.stats.expired += (before - self.allocations.len()) as u64;
        if !freed.is_empty() {
            self.by_port = self
                .allocations
                .iter()
                .enumerate()
                .flat_map(|(i, al)| al.sides.iter().map(move |s| (s.port, i)))
                .collect();
        }
        freed
    }

    /// How many allocations exist.
    #[must_use]
    pub fn len(&self) -> usize {
        self.allocations.len()
    }

    /// Whether there is none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PublicKey = PublicKey([1; 32]);
    const B: PublicKey = PublicKey([2; 32]);

    fn side(key: PublicKey, port: u16, t: u8) -> Side {
        Side {
            key,
            port,
            token: [t; 16],
            source: None,
        }
    }

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwards_only_between_the_two_bound_sources() {
        let t0 = crate::test_now();
        let mut r = Relay::new(Limits::default());
        assert!(r.insert(t0, side(A, 40000, 1), side(B, 40001, 2)));
        let (xa, xb, evil) = (
            ep("198.51.100.10:1111"),
            ep("198.51.100.20:2222"),
            ep("198.51.100.99:1"),
        );
        // Nothing before the binds; a wrong token binds nothing.
        assert_eq!(r.datagram(t0, 40000, xa, b"\x04\0\0\0data"), Verdict::Drop);
        assert_eq!(
            r.datagram(t0, 40000, evil, &bind_datagram(&[2; 16])),
            Verdict::Drop
        );
        assert_eq!(
            r.datagram(t0, 40000, xa, &bind_datagram(&[1; 16])),
            Verdict::Bound { key: A }
        );
        assert_eq!(
            r.datagram(t0, 40000, xa, b"\x04\0\0\0data"),
            Verdict::Drop,
            "B not bound yet"
        );
        assert_eq!(r.stats.unbound_peer, 1);
        assert_eq!(
            r.datagram(t0, 40001, xb, &bind_datagram(&[2; 16])),
            Verdict::Bound { key: B }
        );
        assert_eq!(
            r.datagram(t0, 40000, xa, b"\x04\0\0\0data"),
            Verdict::Forward {
                from_port: 40001,
                to: xb
            }
        );
        assert_eq!(
            r.datagram(t0, 40001, xb, b"\x04\0\0\0back"),
            Verdict::Forward {
                from_port: 40000,
                to: xa
            }
        );
        // An unregistered source, even on the right port, is dropped.
        assert_eq!(
            r.datagram(t0, 40000, evil, b"\x04\0\0\0data"),
            Verdict::Drop
        );
        assert_eq!(r.datagram(t0, 40001, xa, b"\x04\0\0\0data"), Verdict::Drop);
        assert_eq!(r.datagram(t0, 40009, xa, b"\x04\0\0\0data"), Verdict::Drop);
        assert_eq!(r.stats.forwarded, 2);
        assert_eq!(
            r.stats.unregistered, 4,
            "before the bind, a wrong token, two strangers"
        );
        assert_eq!(r.stats.unknown_port, 1);
        assert_eq!(r.pair(&B, &A).unwrap()[0].port, 40001);
    }

    #[test]
    fn rate_limit_full_and_idle_expiry() {
        let t0 = crate::test_now();
        let mut r = Relay::new(Limits {
            max_allocations: 1,
            bytes_per_second: 1000,
            idle: Duration::from_secs(5),
        });
        assert!(r.insert(t0, side(A, 1, 1), side(B, 2, 2)));
        assert!(!r.insert(t0, side(A, 3, 1), side(B, 4, 2)), "full");
        let (xa, xb) = (ep("198.51.100.10:1"), ep("198.51.100.20:2"));
        r.datagram(t0, 1, xa, &bind_datagram(&[1; 16]));
        r.datagram(t0, 2, xb, &bind_datagram(&[2; 16]));
        let big = [4u8; 400];
        let sent = (0..5)
            .filter(|_| matches!(r.datagram(t0, 1, xa, &big), Verdict::Forward { .. }))
            .count();
        assert_eq!(sent, 2, "1000 bytes of budget: two 400-byte datagrams");
        assert_eq!(r.stats.rate_limited, 3);
        let t1 = t0 + Duration::from_millis(500);
        assert!(
            matches!(r.datagram(t1, 1, xa, &big), Verdict::Forward { .. }),
            "refilled"
        );
        assert!(r.expire(t1 + Duration::from_secs(5)).is_empty());
        assert_eq!(r.expire(t1 + Duration::from_secs(6)), vec![1, 2]);
        assert!(r.is_empty());
        assert_eq!(r.datagram(t1, 1, xa, &big), Verdict::Drop);
        assert!(r.insert(t1, side(A, 3, 1), side(B, 4, 2)), "room again");
    }
}
