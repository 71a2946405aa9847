//! What every signed record shares: `kind u8 | version u8 | body | signature [64]`,
//! the signature by the owner's key over a context, the owner name (a `str`) and
//! everything before it; and the reading errors in records' terms.

use super::{RecordError, RECORD_VERSION};
use crate::codec::{CodecError, Writer};
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};

const SIG_CONTEXT: &[u8] = b"portdistrict record v1\0";

/// The kind byte of a master record.
pub(super) const KIND_MASTER: u8 = 1;
/// The kind byte of a device record.
pub(super) const KIND_DEVICE: u8 = 2;
/// The kind byte of a trust record.
pub(super) const KIND_TRUST: u8 = 3;

impl From<CodecError> for RecordError {
    fn from(e: CodecError) -> RecordError {
        RecordError::Malformed(match e {
            CodecError::Truncated(_) => "it ends early",
            CodecError::NotText(_) => "a name is not text",
            CodecError::Family { .. } => "endpoint family must be 4 or 6",
        })
    }
}

/// A writer started with a record's kind, version, issue and expiry times.
pub(super) fn head(kind: u8, issued: u64, expires: u64) -> Writer {
    let mut w = Writer::new();
    w.u8(kind).u8(RECORD_VERSION).u64(issued).u64(expires);
    w
}

/// Checks that `s` is one lowercase DNS label (a device name).
pub(super) fn check_label(s: &str) -> Result<(), RecordError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RecordError::Malformed(
            "a device name must be one lowercase DNS label",
        ))
    }
}

/// Appends the signature over the context, the owner name and `body`.
pub(super) fn finish(body: Writer, owner: &str, key: &Ed25519KeyPair) -> Vec<u8> {
    let sig = key.sign(&signed_message(owner, body.as_bytes()));
    let mut body = body.into_bytes();
    body.extend_from_slice(sig.as_ref());
    body
}

fn signed_message(owner: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Writer::after(SIG_CONTEXT);
    m.str(owner).bytes(body);
    m.into_bytes()
}

/// Checks version and signature; returns the body after kind and version, and the kind.
pub(super) fn check_signed<'a>(
    bytes: &'a [u8],
    at: &str,
    key: &[u8; 32],
) -> Result<(&'a [u8], u8), RecordError> {
    if bytes.len() < 2 + 64 {
        return Err(RecordError::Malformed("it ends early"));
    }
    if bytes[1] != RECORD_VERSION {
        return Err(RecordError::Version(bytes[1]));
    }
    let (body, sig) = bytes.split_at(bytes.len() - 64);
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&signed_message(at, body), sig)
        .map_err(|_| RecordError::Signature)?;
    Ok((&body[2..], bytes[0]))
}
