//! Exit negotiation messages, sent in one UDP datagram each inside the tunnel to the
//! provider's negotiation port. Layouts (integers big-endian):
//!
//! ```text
//! request: "PDX" | 2 (version) | 1 (type) | token [16] | consumer WireGuard key [32]
//!          | proof [32]
//! ack:     "PDX" | 2           | 2        | inner_v4 [4] | has_v6 u8 | inner_v6 [16]
//!          | resolver family u8 (4|6) | resolver [4|16]
//! nak:     "PDX" | 2           | 3        | reason u8 (1 unknown token, 2 expired,
//!          3 used up, 4 revoked, 5 full, 6 outdated request, 7 bad proof,
//!          8 unavailable)
//! ```
//!
//! The proof shows that the sender holds the private key of the WireGuard key it
//! registers ([`crate::negotiate::request`] makes it, [`crate::negotiate::check`]
//! verifies it). Version 1 requests had none: they parse as
//! [`WireError::Outdated`] and the provider refuses them.
//!
//! [`Message::parse`] never panics and names what is wrong; [`Message::emit`] writes
//! exactly what `parse` reads back. Both go through the control core's codec (the
//! resolver is its IP address encoding: family byte, then the octets).

use crate::store::Refusal;
use portdistrict_control_core::codec::{CodecError, Reader, Writer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const MAGIC: &[u8; 3] = b"PDX";
/// The negotiation protocol version.
pub const VERSION: u8 = 2;
/// Bytes of a request before its proof (what the proof covers).
pub const REQUEST_SIGNED_LEN: usize = 5 + 16 + 32;

/// One negotiation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Consumer -> provider: use me as an exit, by this invite.
    Request {
        /// The invite's token.
        token: [u8; 16],
        /// The consumer's WireGuard public key.
        wg_key: [u8; 32],
        /// Proof of holding `wg_key`'s private key: a MAC over the bytes before it
        /// under a key only that key's holder and the provider can derive.
        proof: [u8; 32],
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
    /// An earlier protocol version, no longer accepted.
    #[error("exit negotiation version {0} is no longer accepted (version 2 proves key ownership): upgrade the consumer")]
    Outdated(u8),
    /// An unknown message type or reason code.
    #[error("unknown exit negotiation {0} {1}")]
    Unknown(&'static str, u8),
    /// Too short or too long for its type.
    #[error("exit negotiation message of {0} bytes has the wrong length for its type")]
    Length(usize),
}

impl Refusal {
    /// The reason code of a nak.
    pub(crate) fn code(self) -> u8 {
        match self {
            Refusal::UnknownToken => 1,
            Refusal::Expired => 2,
            Refusal::UsedUp => 3,
            Refusal::Revoked => 4,
            Refusal::Full => 5,
            Refusal::Outdated => 6,
            Refusal::BadProof => 7,
            Refusal::Unavailable => 8,
        }
    }

    /// The refusal of a reason code.
    pub(crate) fn from_code(code: u8) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl Message {
    /// Parses one datagram.
    pub fn parse(b: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader::new(b);
        let Ok(head) = r.array::<5>("header") else {
            return Err(WireError::NotNegotiation);
        };
        if &head[..3] != MAGIC {
            return Err(WireError::NotNegotiation);
        }
        if head[3] > VERSION {
            return Err(WireError::Version(head[3]));
        }
        if head[3] < VERSION {
            return Err(WireError::Outdated(head[3]));
        }
        let body_len = |n: usize| {
            if r.rest().len() == n {
                Ok(())
            } else {
                Err(WireError::Length(b.len()))
            }
        };
        let short = |_: CodecError| WireError::Length(b.len());
        match head[4] {
            1 => {
                body_len(80)?;
                Ok(Message::Request {
                    token: r.array("token").map_err(short)?,
                    wg_key: r.array("WireGuard key").map_err(short)?,
                    proof: r.array("proof").map_err(short)?,
                })
            }
            2 => parse_ack(r).ok_or(WireError::Length(b.len()))?,
            3 => {
                body_len(1)?;
                let code = r.u8("reason").map_err(short)?;
                Refusal::from_code(code)
                    .map(Message::Nak)
                    .ok_or(WireError::Unknown("refusal", code))
            }
            t => Err(WireError::Unknown("message type", t)),
        }
    }

    /// The datagram.
    pub fn emit(&self) -> Vec<u8> {
        let mut w = Writer::after(MAGIC);
        w.u8(VERSION);
        match self {
            Message::Request {
                token,
                wg_key,
                proof,
            } => w.u8(1).bytes(token).bytes(wg_key).bytes(proof),
            Message::Ack {
                inner_v4,
                inner_v6,
                resolver,
            } => w
                .u8(2)
                .bytes(&inner_v4.octets())
                .u8(u8::from(inner_v6.is_some()))
                .bytes(&inner_v6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets())
                .ip(*resolver),
            Message::Nak(reason) => w.u8(3).u8(reason.code()),
        };
        w.into_bytes()
    }
}

/// The body of an ack; `None` if its length is wrong.
fn parse_ack(mut r: Reader<'_>) -> Option<Result<Message, WireError>> {
    let v4 = r.array::<4>("inner IPv4 address").ok()?;
    let has_v6 = r.u8("IPv6 flag").ok()?;
    let v6 = r.array::<16>("inner IPv6 address").ok()?;
    let family = *r.rest().first()?;
    let resolver = match (family, r.rest().len() - 1) {
        (4, 4) | (6, 16) => r.ip("resolver").ok()?,
        (4 | 6, _) => return None,
        (f, _) => return Some(Err(WireError::Unknown("resolver family", f))),
    };
    let inner_v6 = match has_v6 {
        0 => None,
        1 => Some(Ipv6Addr::from(v6)),
        x => return Some(Err(WireError::Unknown("IPv6 flag", x))),
    };
    Some(Ok(Message::Ack {
        inner_v4: Ipv4Addr::from(v4),
        inner_v6,
        resolver,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn golden_request() {
        let m = Message::Request {
            token: [0xab; 16],
            wg_key: [0xcd; 32],
            proof: [0xef; 32],
        };
        let b = m.emit();
        assert_eq!(
            b,
            unhex(
                "50445802 01
                 abababababababababababababababab
                 cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd
                 efefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefef"
            )
        );
        assert_eq!(b.len(), REQUEST_SIGNED_LEN + 32);
        assert_eq!(Message::parse(&b), Ok(m));
    }

    #[test]
    fn version_1_requests_are_outdated() {
        let mut v1 = b"PDX\x01\x01".to_vec();
        v1.extend_from_slice(&[0xab; 16]);
        v1.extend_from_slice(&[0xcd; 32]);
        assert_eq!(Message::parse(&v1), Err(WireError::Outdated(1)));
        assert!(WireError::Outdated(1).to_string().contains("upgrade"));
    }

    #[test]
    fn golden_ack_and_round_trips() {
        let m = Message::Ack {
            inner_v4: Ipv4Addr::new(100, 64, 0, 2),
            inner_v6: Some("fd7a:115c:a1e0::2".parse().unwrap()),
            resolver: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
        };
        let b = m.emit();
        assert_eq!(&b[..10], b"PDX\x02\x02\x64\x40\x00\x02\x01");
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
        assert_eq!(Message::parse(b"PDX\x03\x01"), Err(WireError::Version(3)));
        assert_eq!(
            Message::parse(b"PDX\x02\x09"),
            Err(WireError::Unknown("message type", 9))
        );
        assert_eq!(
            Message::parse(b"PDX\x02\x03\x09"),
            Err(WireError::Unknown("refusal", 9))
        );
        assert_eq!(
            Message::parse(b"PDX\x02\x01\x00"),
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
                proof: [3; 32],
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
