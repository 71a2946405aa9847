//! Grants: an identity's signed statement that pins what an attested exit must run —
//! its launch measurement and the guest-policy rules — for one holder identity (or
//! whoever holds the grant). A consumer holding a grant refuses an exit whose
//! attestation is missing, fails a check, or measures otherwise.
//!
//! One line, `portdistrict-grant1:<base64url>`; binary layout (integers big-endian):
//!
//! ```text
//! version u8 (1) | issuer [32] (Ed25519 identity key) | holder kind u8 (0 anyone,
//! 1 identity) | holder [32] (kind 1 only) | measurement [48] | min ABI major u8
//! | min ABI minor u8 | SMT u8 (0 allowed, 1 forbidden) | issued u64 | expires u64
//! | signature [64]
//! ```
//!
//! The signature (the issuer's) covers `"portdistrict-grant1\0"` followed by every
//! byte before it. Decoding verifies it under the embedded issuer key; whether the
//! issuer is one the consumer trusts, the holder this consumer and the grant
//! unexpired is [`Grant::check`]'s, with the time as an argument.

use super::{Expected, Smt};
use crate::codec::{BlobError, CodecError, Label, Reader, Writer};
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

/// The label every grant starts with.
pub const PREFIX: &str = LABEL.prefix();
const LABEL: Label = Label::new("portdistrict-grant1:");
/// The one binary version this code writes and reads.
pub const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"portdistrict-grant1\0";

/// Why a grant is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Not a grant.
    #[error("not a portdistrict grant: it must start with {PREFIX:?}")]
    NotAGrant,
    /// A later format.
    #[error("grant format version {0} is newer than this portdistrict understands: upgrade portdistrict")]
    UnknownVersion(u8),
    /// Not base64url.
    #[error("grant is damaged: not base64url ({0})")]
    Base64(String),
    /// Ends early.
    #[error("grant is damaged: it ends inside the {0}")]
    Truncated(&'static str),
    /// Bytes after the signature.
    #[error("grant is damaged: {0} unexpected bytes after the signature")]
    Trailing(usize),
    /// A field out of range.
    #[error("grant is damaged: {0}")]
    Malformed(&'static str),
    /// The signature does not verify.
    #[error("grant signature does not verify: it was altered")]
    BadSignature,
    /// Signed by an identity the holder does not trust.
    #[error("the grant is signed by an identity that is not trusted here")]
    UntrustedIssuer,
    /// For another holder.
    #[error("the grant is for another identity")]
    OtherHolder,
    /// Past its expiry.
    #[error("the grant expired at {0} (Unix time)")]
    Expired(u64),
}

impl From<CodecError> for GrantError {
    fn from(e: CodecError) -> GrantError {
        match e {
            CodecError::Truncated(f) => GrantError::Truncated(f),
            _ => GrantError::Malformed("a field is out of range"),
        }
    }
}

/// What a grant pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The issuing identity's Ed25519 key.
    pub issuer: [u8; 32],
    /// The identity the grant is for (`None`: whoever holds it).
    pub holder: Option<[u8; 32]>,
    /// The exit's expected launch measurement.
    pub measurement: [u8; 48],
    /// The lowest guest ABI the policy may require.
    pub min_abi: (u8, u8),
    /// SMT rule.
    pub smt: Smt,
    /// When it was issued, Unix seconds.
    pub issued: u64,
    /// When it stops pinning (after that the consumer refuses the exit), Unix seconds.
    pub expires: u64,
}

fn signed(body: &[u8]) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(body);
    m
}

impl Grant {
    /// The grant as one line, signed with `key` (the issuer is written from it).
    #[must_use]
    pub fn encode(&self, key: &Ed25519KeyPair) -> String {
        let mut w = Writer::new();
        w.u8(VERSION).bytes(key.public_key().as_ref());
        match &self.holder {
            None => {
                w.u8(0);
            }
            Some(h) => {
                w.u8(1).bytes(h);
            }
        }
        w.bytes(&self.measurement)
            .u8(self.min_abi.0)
            .u8(self.min_abi.1)
            .u8(match self.smt {
                Smt::Any => 0,
                Smt::Forbidden => 1,
            })
            .u64(self.issued)
            .u64(self.expires);
        let sig = key.sign(&signed(w.as_bytes()));
        w.bytes(sig.as_ref());
        LABEL.encode(w.as_bytes())
    }

    /// Parses a grant line and verifies its signature under its issuer.
    pub fn decode(text: &str) -> Result<Grant, GrantError> {
        let bytes = LABEL.decode(text).map_err(|e| match e {
            BlobError::Foreign => GrantError::NotAGrant,
            BlobError::Later(v) => GrantError::UnknownVersion(v),
            BlobError::Base64(e) => GrantError::Base64(e),
        })?;
        let mut r = Reader::new(&bytes);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(GrantError::UnknownVersion(version));
        }
        let issuer: [u8; 32] = r.array("issuer")?;
        let holder = match r.u8("holder kind")? {
            0 => None,
            1 => Some(r.array("holder")?),
            _ => return Err(GrantError::Malformed("holder kind must be 0 or 1")),
        };
        let measurement = r.array("measurement")?;
        let min_abi = (r.u8("ABI major")?, r.u8("ABI minor")?);
        let smt = match r.u8("SMT rule")? {
            0 => Smt::Any,
            1 => Smt::Forbidden,
            _ => return Err(GrantError::Malformed("SMT rule must be 0 or 1")),
        };
        let issued = r.u64("issue time")?;
        let expires = r.u64("expiry")?;
        let signed_len = r.consumed();
        let sig: [u8; 64] = r.array("signature")?;
        if !r.is_empty() {
            return Err(GrantError::Trailing(r.rest().len()));
        }
        UnparsedPublicKey::new(&ED25519, issuer)
            .verify(&signed(&bytes[..signed_len]), &sig)
            .map_err(|_| GrantError::BadSignature)?;
        Ok(Grant {
            issuer,
            holder,
            measurement,
            min_abi,
            smt,
            issued,
            expires,
        })
    }

    /// Whether this grant applies here: issued by one of `trusted` (identity keys),
    /// for `holder` (or anyone), unexpired at `now`.
    pub fn check(
        &self,
        trusted: &[[u8; 32]],
        holder: &[u8; 32],
        now: u64,
    ) -> Result<(), GrantError> {
        if !trusted.contains(&self.issuer) {
            return Err(GrantError::UntrustedIssuer);
        }
        if self.holder.is_some_and(|h| h != *holder) {
            return Err(GrantError::OtherHolder);
        }
        if now > self.expires {
            return Err(GrantError::Expired(self.expires));
        }
        Ok(())
    }

    /// What the verifier expects of an exit under this grant whose channel keys bind
    /// to `report_data`.
    #[must_use]
    pub fn expected(&self, report_data: [u8; 64]) -> Expected {
        Expected {
            measurement: Some(self.measurement),
            report_data: Some(report_data),
            min_abi: self.min_abi,
            smt: self.smt,
            ..Expected::default()
        }
    }
}

/// Why a consumer refuses an exit under a grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExitRefused {
    /// The exit sent no attestation.
    #[error("the exit sent no attestation, and a grant pins its measurement")]
    Missing,
    /// A check failed.
    #[error("the exit's attestation fails its check {check}: {why}")]
    Failed {
        /// The check's name.
        check: &'static str,
        /// Why.
        why: super::AttestError,
    },
}

/// An exit's attestation as it arrives: report, VCEK (DER), ASK+ARK (PEM).
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The report.
    pub report: &'a [u8],
    /// The VCEK.
    pub vcek: &'a [u8],
    /// The chain.
    pub chain: &'a [u8],
}

/// A consumer's decision on an exit under `grant`: the attestation must be there and
/// pass every check, with the measurement and policy the grant pins and the report
/// data binding the exit's channel keys (`report_data`); `extra_roots` besides the
/// built-in AMD roots.
pub fn judge(
    grant: &Grant,
    presented: Option<Presented<'_>>,
    report_data: [u8; 64],
    extra_roots: &[[u8; 32]],
    now: u64,
) -> Result<super::Verdict, ExitRefused> {
    let p = presented.ok_or(ExitRefused::Missing)?;
    let mut expected = grant.expected(report_data);
    expected.extra_roots = extra_roots.to_vec();
    let v = super::verify(p.report, p.vcek, p.chain, &expected, now);
    match v.first_failure() {
        Some((c, e)) => Err(ExitRefused::Failed {
            check: c.name(),
            why: e.clone(),
        }),
        None => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
    }

    fn grant() -> Grant {
        Grant {
            issuer: [0; 32],
            holder: Some([9; 32]),
            measurement: [0x3e; 48],
            min_abi: (1, 51),
            smt: Smt::Forbidden,
            issued: 1_700_000_000,
            expires: 1_800_000_000,
        }
    }

    fn issuer_of(k: &Ed25519KeyPair) -> [u8; 32] {
        k.public_key().as_ref().try_into().unwrap()
    }

    #[test]
    fn a_grant_round_trips_and_applies_only_where_it_should() {
        let k = key(1);
        let line = grant().encode(&k);
        assert!(line.starts_with(PREFIX));
        let g = Grant::decode(&line).unwrap();
        assert_eq!(
            g,
            Grant {
                issuer: issuer_of(&k),
                ..grant()
            }
        );
        let me = [9; 32];
        assert_eq!(g.check(&[issuer_of(&k)], &me, 1_750_000_000), Ok(()));
        assert_eq!(
            g.check(&[issuer_of(&key(2))], &me, 1_750_000_000),
            Err(GrantError::UntrustedIssuer)
        );
        assert_eq!(
            g.check(&[issuer_of(&k)], &[8; 32], 1_750_000_000),
            Err(GrantError::OtherHolder)
        );
        assert_eq!(
            g.check(&[issuer_of(&k)], &me, 1_800_000_001),
            Err(GrantError::Expired(1_800_000_000))
        );
        let anyone = Grant {
            holder: None,
            ..grant()
        };
        let g = Grant::decode(&anyone.encode(&k)).unwrap();
        assert_eq!(g.check(&[issuer_of(&k)], &[8; 32], 1_750_000_000), Ok(()));
        let e = g.expected([5; 64]);
        assert_eq!(e.measurement, Some([0x3e; 48]));
        assert_eq!(e.report_data, Some([5; 64]));
        assert_eq!((e.min_abi, e.smt), ((1, 51), Smt::Forbidden));
    }

    #[test]
    fn damaged_or_altered_grants_are_refused_by_name() {
        let line = grant().encode(&key(1));
        let bytes = LABEL.decode(&line).unwrap();
        // Every single-byte change before the signature breaks the signature (or the
        // structure); truncations name the field.
        for at in 0..bytes.len() - 64 {
            let mut b = bytes.clone();
            b[at] ^= 0x01;
            assert!(Grant::decode(&LABEL.encode(&b)).is_err(), "byte {at}");
        }
        for n in 0..bytes.len() {
            assert!(
                matches!(
                    Grant::decode(&LABEL.encode(&bytes[..n])),
                    Err(GrantError::Truncated(_) | GrantError::UnknownVersion(_))
                ),
                "length {n}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Grant::decode(&LABEL.encode(&longer)),
            Err(GrantError::Trailing(1))
        );
        assert_eq!(
            Grant::decode("portdistrict-invite1:AAAA"),
            Err(GrantError::NotAGrant)
        );
        let mut smt = bytes;
        smt[1 + 32 + 1 + 32 + 48 + 2] = 7;
        assert_eq!(
            Grant::decode(&LABEL.encode(&smt)),
            Err(GrantError::Malformed("SMT rule must be 0 or 1"))
        );
    }
}
