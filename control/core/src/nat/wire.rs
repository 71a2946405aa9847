//! The messages between a node and its facilitator, one per UDP datagram inside the
//! WireGuard tunnel (from the node's [`super::addr::node`] address to
//! [`super::addr::FACILITATOR`] port [`super::addr::PORT`], and back).
//!
//! Layout: `PDF` (magic), version (1), type, body. Keys are 32 raw bytes, endpoints
//! the codec's (family, address, port), lists a count byte and that many entries.
//!
//! | type | message | body |
//! | --- | --- | --- |
//! | 1 | [`Message::Meet`] | peer key, count, published endpoints (at most 8) |
//! | 2 | [`Message::Introduce`] | peer key, window (u64), start in ms (u16), count, endpoints (at most 9) |
//! | 3 | [`Message::Waiting`] | peer key |
//! | 4 | [`Message::RelayAsk`] | peer key |
//! | 5 | [`Message::Relay`] | peer key, relay endpoint, token (16 bytes) |
//! | 6 | [`Message::Refused`] | peer key, reason code |

use crate::codec::{CodecError, Reader, Writer};
use std::net::SocketAddr;

/// The magic every message starts with.
pub const MAGIC: &[u8; 3] = b"PDF";
/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// The most endpoints a node may publish in one [`Message::Meet`].
pub const MAX_PUBLISHED: usize = 8;
/// The most endpoints in one [`Message::Introduce`] (the mapped one and the published).
pub const MAX_ENDPOINTS: usize = MAX_PUBLISHED + 1;
/// The largest message (an [`Message::Introduce`] with IPv6 endpoints).
pub const MAX_LEN: usize = 5 + 32 + 8 + 2 + 1 + MAX_ENDPOINTS * 19;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Node -> facilitator: I want to meet `peer` (a WireGuard key); these are the
    /// endpoints I publish (the facilitator adds the one it sees).
    Meet {
        /// The peer's WireGuard key.
        peer: [u8; 32],
        /// The asking node's published endpoints.
        published: Vec<SocketAddr>,
    },
    /// Facilitator -> both nodes of a pair: send to `endpoints` of `peer` from
    /// `start_in_ms` from now (the window).
    Introduce {
        /// The other node's WireGuard key.
        peer: [u8; 32],
        /// The window's number (for logs; counts up per facilitator run).
        window: u64,
        /// Milliseconds from the moment this message is sent to the window's start.
        start_in_ms: u16,
        /// The other node's endpoints: the mapped one the facilitator sees first.
        endpoints: Vec<SocketAddr>,
    },
    /// Facilitator -> node: `peer` has not asked to meet you (yet); ask again later.
    Waiting {
        /// The peer asked for.
        peer: [u8; 32],
    },
    /// Node -> facilitator: our window failed; relay me to `peer`.
    RelayAsk {
        /// The peer's WireGuard key.
        peer: [u8; 32],
    },
    /// Facilitator -> node: send to `peer` through `relay`, after binding your
    /// source there with `token` ([`super::relay::bind_datagram`]).
    Relay {
        /// The other node's WireGuard key.
        peer: [u8; 32],
        /// This node's side of the allocation.
        relay: SocketAddr,
        /// The secret that binds this node's source address to its side.
        token: [u8; 16],
    },
    /// Facilitator -> node: no (see [`Refusal`]).
    Refused {
        /// The peer the request named.
        peer: [u8; 32],
        /// Why.
        reason: Refusal,
    },
}

/// Why the facilitator refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Every relay allocation is in use.
    #[error("the facilitator's relay is full")]
    RelayFull,
    /// This facilitator does not relay (no `--relay-ports`).
    #[error("the facilitator does not relay")]
    NoRelay,
    /// Too many requests from this node.
    #[error("too many requests to the facilitator; slow down")]
    RateLimited,
}

impl Refusal {
    fn code(self) -> u8 {
        match self {
            Refusal::RelayFull => 1,
            Refusal::NoRelay => 2,
            Refusal::RateLimited => 3,
        }
    }

    fn from_code(c: u8) -> Option<Refusal> {
        [Refusal::RelayFull, Refusal::NoRelay, Refusal::RateLimited]
            .into_iter()
            .find(|r| r.code() == c)
    }
}

/// Why a datagram is not a facilitator message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not starting with the magic.
    #[error("not a facilitator message")]
    NotFacilitator,
    /// Another protocol version.
    #[error("facilitator protocol version {0}, this portdistrict speaks 1")]
    Version(u8),
    /// An unknown message type or code.
    #[error("unknown facilitator {0} {1}")]
    Unknown(&'static str, u8),
    /// Too many endpoints in a list.
    #[error("{0} endpoints in one message; at most {1}")]
    TooMany(usize, usize),
    /// Bytes left after the message.
    #[error("{0} bytes after the end of the message")]
    Trailing(usize),
    /// A field is cut short or malformed.
    #[error("malformed facilitator message: {0}")]
    Codec(#[from] CodecError),
}

impl Message {
    /// Parses one datagram.
    pub fn parse(b: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader::new(b);
        let head = r
            .array::<5>("header")
            .map_err(|_| WireError::NotFacilitator)?;
        if &head[..3] != MAGIC {
            return Err(WireError::NotFacilitator);
        }
        if head[3] != VERSION {
            return Err(WireError::Version(head[3]));
        }
        let peer = r.array::<32>("peer key")?;
        let m = match head[4] {
            1 => Message::Meet {
                peer,
                published: endpoints(&mut r, MAX_PUBLISHED)?,
            },
            2 => Message::Introduce {
                peer,
                window: r.u64("window")?,
                start_in_ms: r.u16("window start")?,
                endpoints: endpoints(&mut r, MAX_ENDPOINTS)?,
            },
            3 => Message::Waiting { peer },
            4 => Message::RelayAsk { peer },
            5 => Message::Relay {
                peer,
                relay: r.socket_addr("relay endpoint")?,
                token: r.array("token")?,
            },
            6 => {
                let c = r.u8("reason")?;
                Message::Refused {
                    peer,
                    reason: Refusal::from_code(c).ok_or(WireError::Unknown("refusal", c))?,
                }
            }
            t => return Err(WireError::Unknown("message type", t)),
        };
        if !r.is_empty() {
            return Err(WireError::Trailing(r.rest().len()));
        }
        Ok(m)
    }

    /// The datagram.
    #[must_use]
    pub fn emit(&self) -> Vec<u8> {
        let mut w = Writer::after(MAGIC);
        w.u8(VERSION);
        let list = |w: &mut Writer, eps: &[SocketAddr], max: usize| {
            let eps = &eps[..eps.len().min(max)];
            w.u8(eps.len() as u8);
            for e in eps {
                w.socket_addr(*e);
            }
        };
        match self {
            Message::Meet { peer, published } => {
                w.u8(1).bytes(peer);
                list(&mut w, published, MAX_PUBLISHED);
            }
            Message::Introduce {
                peer,
                window,
                start_in_ms,
                endpoints,
            } => {
                w.u8(2).bytes(peer).u64(*window).u16(*start_in_ms);
                list(&mut w, endpoints, MAX_ENDPOINTS);
            }
            Message::Waiting { peer } => {
                w.u8(3).bytes(peer);
            }
            Message::RelayAsk { peer } => {
                w.u8(4).bytes(peer);
            }
            Message::Relay { peer, relay, token } => {
                w.u8(5).bytes(peer).socket_addr(*relay).bytes(token);
            }
            Message::Refused { peer, reason } => {
                w.u8(6).bytes(peer).u8(reason.code());
            }
        }
        w.into_bytes()
    }

    /// The peer key every message names.
    #[must_use]
    pub fn peer(&self) -> &[u8; 32] {
        match self {
            Message::Meet { peer, .. }
            | Message::Introduce { peer, .. }
            | Message::Waiting { peer }
            | Message::RelayAsk { peer }
            | Message::Relay { peer, .. }
            | Message::Refused { peer, .. } => peer,
        }
    }
}

fn endpoints(r: &mut Reader<'_>, max: usize) -> Result<Vec<SocketAddr>, WireError> {
    let n = usize::from(r.u8("endpoint count")?);
    if n > max {
        return Err(WireError::TooMany(n, max));
    }
    (0..n)
        .map(|_| r.socket_addr("endpoint").map_err(WireError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Message> {
        let v4: SocketAddr = "198.51.100.10:51820".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
        vec![
            Message::Meet {
                peer: [1; 32],
                published: vec![v4, v6],
            },
            Message::Meet {
                peer: [1; 32],
                published: vec![],
            },
            Message::Introduce {
                peer: [2; 32],
                window: 7,
                start_in_ms: 2000,
                endpoints: vec![v6; MAX_ENDPOINTS],
            },
            Message::Waiting { peer: [3; 32] },
            Message::RelayAsk { peer: [4; 32] },
            Message::Relay {
                peer: [5; 32],
                relay: v4,
                token: [9; 16],
            },
            Message::Refused {
                peer: [6; 32],
                reason: Refusal::RelayFull,
            },
        ]
    }

    #[test]
    fn every_message_round_trips_within_the_size_bound() {
        for m in all() {
            let b = m.emit();
            assert!(b.len() <= MAX_LEN, "{m:?}: {} bytes", b.len());
            assert_eq!(Message::parse(&b).unwrap(), m);
        }
    }

    #[test]
    fn golden_bytes_of_a_wait() {
        let b = Message::Waiting { peer: [0xab; 32] }.emit();
        let mut want = b"PDF\x01\x03".to_vec();
        want.extend_from_slice(&[0xab; 32]);
        assert_eq!(b, want);
    }

    #[test]
    fn malformed_input_is_refused_by_name_never_a_panic() {
        assert_eq!(Message::parse(b""), Err(WireError::NotFacilitator));
        assert_eq!(
            Message::parse(b"PDX\x01\x01"),
            Err(WireError::NotFacilitator)
        );
        assert_eq!(Message::parse(b"PDF\x02\x03"), Err(WireError::Version(2)));
        let mut b = Message::Waiting { peer: [0; 32] }.emit();
        b[4] = 9;
        assert_eq!(
            Message::parse(&b),
            Err(WireError::Unknown("message type", 9))
        );
        let mut b = Message::Waiting { peer: [0; 32] }.emit();
        b.push(0);
        assert_eq!(Message::parse(&b), Err(WireError::Trailing(1)));
        let mut b = Message::Meet {
            peer: [0; 32],
            published: vec![],
        }
        .emit();
        *b.last_mut().unwrap() = 200;
        assert_eq!(
            Message::parse(&b),
            Err(WireError::TooMany(200, MAX_PUBLISHED))
        );
        // Every truncation of every message fails cleanly.
        for m in all() {
            let b = m.emit();
            for n in 0..b.len() {
                assert!(Message::parse(&b[..n]).is_err(), "{m:?} cut at {n}");
            }
        }
    }
}
