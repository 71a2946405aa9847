//! The payloads inside the Noise handshake messages (after decryption), written and
//! read with the control core's codec. Integers big-endian.
//!
//! ```text
//! hello (message 1): timestamp: seconds u64 | nanoseconds u32
//!                    | token id [16] | consumer WireGuard key [32] | proof [32]
//! reply (message 2): answer u8 (1 ack, 2 nak)
//!                    ack: inner_v4 [4] | has_v6 u8 | inner_v6 [16] | resolver (family u8, [4|16])
//!                    nak: reason u8 (the negotiation's nak codes, `wire.rs`)
//!                    | attestation u8 (0 none, 1 present)
//!                    [ | report u16 len, bytes | VCEK DER u16 len, bytes
//!                      | chain PEM u16 len, bytes ]
//! ```
//!
//! The hello carries the fields of a negotiation request ([`crate::wire::Message`])
//! except the token: the PSK proves it, and the provider finds the invite by the
//! token id. The provider rebuilds the request with the token it found to check the
//! proof of WireGuard key ownership ([`crate::negotiate::check`]).

use crate::store::Refusal;
use portdistrict_control_core::codec::{CodecError, Reader, Writer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::TokenId;

/// Bytes of a hello.
pub const HELLO_LEN: usize = 12 + 16 + 32 + 32;
/// Most bytes of an attestation report.
pub const MAX_REPORT: usize = 2048;
/// Most bytes of a VCEK certificate (DER).
pub const MAX_VCEK: usize = 2048;
/// Most bytes of the certificate chain (PEM: ASK and ARK, about 4.6 kB).
pub const MAX_CHAIN: usize = 10 * 1024;

/// When the consumer sent message 1: seconds and nanoseconds since the Unix epoch
/// (TAI64N-like; ordered, so that the provider can refuse anything not newer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Whole seconds.
    pub secs: u64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl From<Duration> for Timestamp {
    fn from(d: Duration) -> Timestamp {
        Timestamp {
            secs: d.as_secs(),
            nanos: d.subsec_nanos(),
        }
    }
}

/// Message 1's payload: who asks for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// When it was sent.
    pub timestamp: Timestamp,
    /// Which invite ([`TokenId::of`] its token).
    pub token_id: TokenId,
    /// The consumer's WireGuard public key.
    pub wg_key: [u8; 32],
    /// The proof of holding `wg_key`'s private key, as in a negotiation request.
    pub proof: [u8; 32],
}

/// The provider's answer, as in the negotiation's ack and nak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Authorized: these are your addresses and resolver.
    Ack {
        /// The consumer's inner IPv4 address.
        inner_v4: Ipv4Addr,
        /// Its inner IPv6 address, when the provider offers IPv6.
        inner_v6: Option<Ipv6Addr>,
        /// The DNS resolver reachable through the tunnel.
        resolver: IpAddr,
    },
    /// Refused, and why.
    Nak(Refusal),
}

/// The attestation frame: opaque here, checked by the attestation verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// The SEV-SNP attestation report.
    pub report: Vec<u8>,
    /// The VCEK certificate, DER.
    pub vcek: Vec<u8>,
    /// The ASK and ARK certificates, PEM.
    pub chain: Vec<u8>,
}

/// Message 2's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The answer to the hello.
    pub answer: Answer,
    /// The provider's attestation, when it has one.
    pub attestation: Option<Attestation>,
}

/// Why a decrypted payload is not a hello or a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// It ends early, or an address family is wrong.
    #[error("exit channel payload: {0}")]
    Codec(#[from] CodecError),
    /// An unknown code in the named field.
    #[error("exit channel payload: unknown {0} {1}")]
    Unknown(&'static str, u8),
    /// A timestamp's nanoseconds of a second or more.
    #[error("exit channel payload: {0} nanoseconds is not within a second")]
    Nanoseconds(u32),
    /// Bytes after the end.
    #[error("exit channel payload: {0} bytes after its end")]
    Trailing(usize),
    /// A field longer than its bound.
    #[error("exit channel payload: the {0} of {1} bytes is longer than allowed")]
    TooLong(&'static str, usize),
}

impl Hello {
    /// Its bytes.
    pub fn emit(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.timestamp.secs)
            .bytes(&self.timestamp.nanos.to_be_bytes())
            .bytes(&self.token_id.0)
            .bytes(&self.wg_key)
            .bytes(&self.proof);
        w.into_bytes()
    }

    /// Reads one, exactly.
    pub fn parse(b: &[u8]) -> Result<Hello, PayloadError> {
        let mut r = Reader::new(b);
        let secs = r.u64("timestamp seconds")?;
        let nanos = u32::from_be_bytes(r.array("timestamp nanoseconds")?);
        if nanos >= 1_000_000_000 {
            return Err(PayloadError::Nanoseconds(nanos));
        }
        let hello = Hello {
            timestamp: Timestamp { secs, nanos },
            token_id: TokenId(r.array("token id")?),
            wg_key: r.array("WireGuard key")?,
            proof: r.array("proof")?,
        };
        end(&r)?;
        Ok(hello)
    }
}

impl Reply {
    /// Its bytes, or which attestation field is longer than its bound.
    pub fn emit(&self) -> Result<Vec<u8>, PayloadError> {
        let mut w = Writer::new();
        match &self.answer {
            Answer::Ack {
                inner_v4,
                inner_v6,
                resolver,
            } => w
                .u8(1)
                .bytes(&inner_v4.octets())
                .u8(u8::from(inner_v6.is_some()))
                .bytes(&inner_v6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets())
                .ip(*resolver),
            Answer::Nak(reason) => w.u8(2).u8(reason.code()),
        };
        match &self.attestation {
            None => {
                w.u8(0);
            }
            Some(a) => {
                w.u8(1);
                for (field, bytes, max) in a.fields() {
                    let len = u16::try_from(bytes.len())
                        .ok()
                        .filter(|&n| usize::from(n) <= max)
                        .ok_or(PayloadError::TooLong(field, bytes.len()))?;
                    w.u16(len).bytes(bytes);
                }
            }
        }
        Ok(w.into_bytes())
    }

    /// Reads one, exactly.
    pub fn parse(b: &[u8]) -> Result<Reply, PayloadError> {
        let mut r = Reader::new(b);
        let answer = match r.u8("answer")? {
            1 => parse_ack(&mut r)?,
            2 => {
                let code = r.u8("refusal")?;
                Answer::Nak(Refusal::from_code(code).ok_or(PayloadError::Unknown("refusal", code))?)
            }
            x => return Err(PayloadError::Unknown("answer", x)),
        };
        let attestation = match r.u8("attestation flag")? {
            0 => None,
            1 => Some(Attestation {
                report: bounded(&mut r, "report", MAX_REPORT)?,
                vcek: bounded(&mut r, "VCEK", MAX_VCEK)?,
                chain: bounded(&mut r, "chain", MAX_CHAIN)?,
            }),
            x => return Err(PayloadError::Unknown("attestation flag", x)),
        };
        end(&r)?;
        Ok(Reply {
            answer,
            attestation,
        })
    }
}

impl Attestation {
    fn fields(&self) -> [(&'static str, &[u8], usize); 3] {
        [
            ("report", &self.report, MAX_REPORT),
            ("VCEK", &self.vcek, MAX_VCEK),
            ("chain", &self.chain, MAX_CHAIN),
        ]
    }
}

fn parse_ack(r: &mut Reader<'_>) -> Result<Answer, PayloadError> {
    let inner_v4 = Ipv4Addr::from(r.array::<4>("inner IPv4 address")?);
    let has_v6 = r.u8("IPv6 flag")?;
    let v6 = Ipv6Addr::from(r.array::<16>("inner IPv6 address")?);
    let inner_v6 = match has_v6 {
        0 => None,
        1 => Some(v6),
        x => return Err(PayloadError::Unknown("IPv6 flag", x)),
    };
    Ok(Answer::Ack {
        inner_v4,
        inner_v6,
        resolver: r.ip("resolver")?,
    })
}

/// A u16-length-prefixed field of at most `max` bytes.
fn bounded(r: &mut Reader<'_>, field: &'static str, max: usize) -> Result<Vec<u8>, PayloadError> {
    let len = usize::from(r.u16(field)?);
    if len > max {
        return Err(PayloadError::TooLong(field, len));
    }
    Ok(r.bytes(len, field)?.to_vec())
}

fn end(r: &Reader<'_>) -> Result<(), PayloadError> {
    match r.rest().len() {
        0 => Ok(()),
        n => Err(PayloadError::Trailing(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::tests::unhex;

    #[test]
    fn golden_hello() {
        let h = Hello {
            timestamp: Timestamp {
                secs: 0x6974_0000,
                nanos: 5,
            },
            token_id: TokenId([0x11; 16]),
            wg_key: [0x22; 32],
            proof: [0x33; 32],
        };
        let b = h.emit();
        assert_eq!(
            b,
            unhex(
                "0000000069740000 00000005
                 11111111111111111111111111111111
                 2222222222222222222222222222222222222222222222222222222222222222
                 3333333333333333333333333333333333333333333333333333333333333333"
            )
        );
        assert_eq!(b.len(), HELLO_LEN);
        assert_eq!(Hello::parse(&b), Ok(h));
        for n in 0..b.len() {
            assert!(Hello::parse(&b[..n]).is_err(), "prefix {n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(Hello::parse(&long), Err(PayloadError::Trailing(1)));
    }

    #[test]
    fn golden_replies_and_bounds() {
        let nak = Reply {
            answer: Answer::Nak(Refusal::Expired),
            attestation: None,
        };
        assert_eq!(nak.emit().unwrap(), [2, 2, 0]);
        let ack = Reply {
            answer: Answer::Ack {
                inner_v4: Ipv4Addr::new(100, 64, 0, 2),
                inner_v6: None,
                resolver: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
            },
            attestation: Some(Attestation {
                report: vec![0xaa; 2],
                vcek: vec![0xbb; 1],
                chain: vec![],
            }),
        };
        let b = ack.emit().unwrap();
        assert_eq!(
            b,
            unhex(
                "01 64400002 00 00000000000000000000000000000000 04 64400001
                 01 0002 aaaa 0001 bb 0000"
            )
        );
        assert_eq!(Reply::parse(&b), Ok(ack.clone()));
        assert_eq!(Reply::parse(&nak.emit().unwrap()), Ok(nak));
        for n in 0..b.len() {
            assert!(Reply::parse(&b[..n]).is_err(), "prefix {n}");
        }
        let mut too_long = ack;
        if let Some(a) = too_long.attestation.as_mut() {
            a.report = vec![0; MAX_REPORT + 1];
        }
        assert_eq!(
            too_long.emit(),
            Err(PayloadError::TooLong("report", MAX_REPORT + 1))
        );
        let mut claims_long = b[..b.len() - 2].to_vec();
        claims_long.extend_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            Reply::parse(&claims_long),
            Err(PayloadError::TooLong("chain", usize::from(u16::MAX)))
        );
    }
}
