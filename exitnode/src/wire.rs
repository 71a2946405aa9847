//! Exit negotiation messages, sent in one UDP datagram each inside the tunnel to the
//! provider's negotiation port. Layouts (integers big-endian):
//!
//! ```text
//! request: "PDX" | 1 (version) | 1 (type) | token [16] | consumer WireGuard key [32]
//! ack:     "PDX" | 1           | 2        | inner_v4 [4] | has_v6 u8 | inner_v6 [16]
//!          | resolver family u8 (4|6) | resolver [4|16]
//! nak:     "PDX" | 1           | 3        | reason u8 (1 unknown token, 2 expired,
//!          3 used up, 4 revoked, 5 full)
//! ```
//!
//! [`Message::parse`] never panics and names what is wrong; [`Message::emit`] writes
//! exactly what `parse` reads back.

use crate::store::Refusal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const MAGIC: &[u8; 3] = b"PDX";
/// The negotiation protocol version.
pub const VERSION: u8 = 1;

/// One negotiation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Consumer -> provider: use me as an exit, by this invite.
    Request {
        /// The invite's token.
        token: [u8; 16],
        /// The consumer's WireGuard public key.
        wg_key: [u8; 32],
    },
    /// Provider -> consumer: authorized; these are your addresses and resolver.
    Ack {
        /// The consumer's inner IPv4 address.
        inner_v4: Ipv4Addr,
        /// Its inner IPv6 address, when the provider offers IPv6.
        inner_v6: Option<Ipv6Addr>,
        /// The DNS resolver reachable through the tunnel.
        resolver: IpAddr,
    },
    /// Provider -> consumer: refused, and why.
    Nak(Refusal),
}

/// Why a datagram is not a negotiation message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not starting with the magic.
    #[error("not an exit negotiation message")]
    NotNegotiation,
    /// A later protocol version.
    #[error("exit negotiation version {0} is newer than this portdistrict: upgrade")]
    Version(u8),
    /// An unknown message type or reason code.
    #[error("unknown exit negotiation {0} {1}")]
    Unknown(&'static str, u8),
    /// Too short or too long for its type.
    #[error("exit negotiation message of {0} bytes has the wrong length for its type")]
    Length(usize),
}

impl Message {
    /// Parses one datagram.
    pub fn parse(b: &[u8]) -> Result<Message, WireError> {
        let Some((head, body)) = b.split_first_chunk::<5>() else {
            return Err(WireError::NotNegotiation);
        };
        if &head[..3] != MAGIC {
            return Err(WireError::NotNegotiation);
        }
        if head[3] != VERSION {
            return Err(WireError::Version(head[3]));
        }
        let len = |n: usize| {
            if body.len() == n {
                Ok(())
            } else {
                Err(WireError::Length(b.len()))
            }
        };
        match head[4] {
            1 => {
                len(48)?;
                Ok(Message::Request {
                    token: body[..16]
                        .try_into()
                        .map_err(|_| WireError::Length(b.len()))?,
                    wg_key: body[16..48]
                        .try_into()
                        .map_err(|_| WireError::Length(b.len()))?,
                })
            }
            2 => parse_ack(body).ok_or(WireError::Length(b.len()))?,
            3 => {
                len(1)?;
                let r = match body[0] {
                    1 => Refusal::UnknownToken,
                    2 => Refusal::Expired,
                    3 => Refusal::UsedUp,
                    4 => Refusal::Revoked,
                    5 => Refusal::Full,
                    x => return Err(WireError::Unknown("refusal", x)),
                };
                Ok(Message::Nak(r))
            }
            t => Err(WireError::Unknown("message type", t)),
        }
    }

    /// The datagram.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        match self {
            Message::Request { token, wg_key } => {
                out.push(1);
                out.extend_from_slice(token);
                out.extend_from_slice(wg_key);
            }
            Message::Ack {
                inner_v4,
                inner_v6,
                resolver,
            } => {
                out.push(2);
                out.extend_from_slice(&inner_v4.octets());
                out.push(u8::from(inner_v6.is_some()));
                out.extend_from_slice(&inner_v6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets());
                match resolver {
                    IpAddr::V4(a) => {
                        out.push(4);
                        out.extend_from_slice(&a.octets());
                    }
                    IpAddr::V6(a) => {
                        out.push(6);
                        out.extend_from_slice(&a.octets());
                    }
                }
            }
            Message::Nak(r) => {
                out.push(3);
                out.push(match r {
                    Refusal::UnknownToken => 1,
                    Refusal::Expired => 2,
                    Refusal::UsedUp => 3,
                    Refusal::Revoked => 4,
                    Refusal::Full => 5,
                });
            }
        }
        out
    }
}

/// The body of an ack; `None` if its length or a flag is wrong.
fn parse_ack(body: &[u8]) -> Option<Result<Message, WireError>> {
    let (v4, rest) = body.split_first_chunk::<4>()?;
    let (&has_v6, rest) = rest.split_first()?;
    let (v6, rest) = rest.split_first_chunk::<16>()?;
    let (&family, rest) = rest.split_first()?;
    let resolver = match (family, rest.len()) {
        (4, 4) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(rest).ok()?)),
        (6, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(rest).ok()?)),
        (4 | 6, _) => return None,
        (f, _) => return Some(Err(WireError::Unknown("resolver family", f))),
    };
    let inner_v6 = match has_v6 {
        0 => None,
        1 => Some(Ipv6Addr::from(*v6)),
        x => return Some(Err(WireError::Unknown("IPv6 flag", x))),
    };
    Some(Ok(Message::Ack {
        inner_v4: Ipv4Addr::from(*v4),
        inner_v6,
        resolver,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_request() {
        let m = Message::Request {
            token: [0xab; 16],
            wg_key: [0xcd; 32],
        };
        let b = m.emit();
        assert_eq!(&b[..5], b"PDX\x01\x01");
        assert_eq!(b.len(), 5 + 16 + 32);
        assert_eq!(&b[5..7], &[0xab, 0xab]);
        assert_eq!(b[21], 0xcd);
        assert_eq!(Message::parse(&b), Ok(m));
    }

    #[test]
    fn golden_ack_and_round_trips() {
        let m = Message::Ack {
            inner_v4: Ipv4Addr::new(100, 64, 0, 2),
            inner_v6: Some("fd7a:115c:a1e0::2".parse().unwrap()),
            resolver: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
        };
        let b = m.emit();
        assert_eq!(&b[..10], b"PDX\x01\x02\x64\x40\x00\x02\x01");
        assert_eq!(&b[b.len() - 5..], &[4, 100, 64, 0, 1]);
        assert_eq!(Message::parse(&b), Ok(m));
        let v6only = Message::Ack {
            inner_v4: Ipv4Addr::new(100, 64, 0, 9),
            inner_v6: None,
            resolver: "fd7a:115c:a1e0::1".parse().unwrap(),
        };
        assert_eq!(Message::parse(&v6only.emit()), Ok(v6only));
        for r in Refusal::ALL {
            assert_eq!(Message::parse(&Message::Nak(r).emit()), Ok(Message::Nak(r)));
        }
    }

    #[test]
    fn garbage_is_named_never_a_panic() {
        assert_eq!(Message::parse(b""), Err(WireError::NotNegotiation));
        assert_eq!(
            Message::parse(b"XYZ\x01\x01"),
            Err(WireError::NotNegotiation)
        );
        assert_eq!(Message::parse(b"PDX\x02\x01"), Err(WireError::Version(2)));
        assert_eq!(
            Message::parse(b"PDX\x01\x09"),
            Err(WireError::Unknown("message type", 9))
        );
        assert_eq!(
            Message::parse(b"PDX\x01\x03\x07"),
            Err(WireError::Unknown("refusal", 7))
        );
        assert_eq!(
            Message::parse(b"PDX\x01\x01\x00"),
            Err(WireError::Length(6))
        );
        let mut ack = Message::Ack {
            inner_v4: Ipv4Addr::new(100, 64, 0, 2),
            inner_v6: None,
            resolver: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
        }
        .emit();
        ack.push(0);
        assert!(Message::parse(&ack).is_err());
        // Every truncation of every message type fails cleanly.
        for m in [
            Message::Request {
                token: [1; 16],
                wg_key: [2; 32],
            }
            .emit(),
            ack,
        ] {
            for n in 0..m.len() - 1 {
                assert!(Message::parse(&m[..n]).is_err(), "prefix {n}");
            }
        }
    }
}
