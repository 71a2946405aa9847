//! Records published in DNS (pure; the randomness is an argument so that golden
//! vectors are exact). Two kinds, both signed, then encrypted to their readers, then
//! base64url-encoded into TXT records at `_portdistrict.<namespace>` (the master
//! record) and `_portdistrict.<device>.<namespace>` (a device record). The format is
//! written down, with golden vectors, in `docs/protocol.md`; a test keeps the two in
//! step.
//!
//! Devices: each has a 32-byte device seed from which its signing key (Ed25519), its
//! ECDH key (X25519) and its WireGuard key (X25519) are derived with BLAKE3
//! `derive_key`; the master key delegates a device by signing its name and public
//! keys, and the master record lists those delegations (the roster).
//!
//! In the order a record travels:
//! - [`keys`](DeviceKeys): device keys and the master's delegations;
//! - [`MasterRecord`], [`DeviceRecord`], [`TrustRecord`]: the signed records (their
//!   common framing — kind, version, signature over the owner name — in `codec`);
//! - [`DeviceRequest`]: a device asking to join a roster (a labeled line);
//! - [`seal`] / [`open`]: the envelope that encrypts a signed record to its readers;
//! - [`to_txt`] / [`from_txt`]: the envelope chunked into TXT records.

mod codec;
mod device;
mod envelope;
mod keys;
mod master;
mod request;
#[cfg(test)]
mod tests;
mod trust;
mod txt;

pub use crate::overlay::subnet_of;
pub use device::DeviceRecord;
pub use envelope::{open, seal};
pub use keys::{Delegation, DeviceKeys, DevicePublic};
pub use master::MasterRecord;
pub use request::{DeviceRequest, DEVICE_REQUEST_PREFIX};
pub use trust::{TrustRecord, MAX_TRUSTED};
pub use txt::{from_txt, to_txt};

use crate::identity::base32;

/// Record format version.
pub const RECORD_VERSION: u8 = 1;
/// Envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;
/// The owner-name label records live under.
pub const LABEL: &str = "_portdistrict";
/// Most devices in one roster.
pub const MAX_DEVICES: usize = 64;
/// Most endpoints in one device record.
pub const MAX_ENDPOINTS: usize = 16;
/// Most readers (key slots) of one record.
pub const MAX_READERS: usize = 4096;
/// Base64 characters per TXT record (each split into strings of 255).
pub const CHUNK: usize = 1000;

/// Why a record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Ends early, bad lengths, trailing bytes, bad values.
    #[error("record is malformed: {0}")]
    Malformed(&'static str),
    /// A later version.
    #[error("record version {0} is newer than this portdistrict understands: upgrade")]
    Version(u8),
    /// None of the key slots opens with our key.
    #[error("record is not readable with our key (we are not among its readers)")]
    NotForUs,
    /// The content does not decrypt (altered).
    #[error("record ciphertext does not authenticate: it was altered")]
    Altered,
    /// The signature does not verify.
    #[error("record signature does not verify: it was altered or not made by its owner")]
    Signature,
    /// A device is not delegated by the master record.
    #[error("device {0:?} is not in its owner's roster")]
    NotDelegated(String),
    /// Past its expiry.
    #[error("record expired at {0} (Unix time)")]
    Expired(u64),
    /// Published for another name than the one it was found at.
    #[error("record is for {found:?}, found at {at:?}")]
    WrongName {
        /// Its owner name.
        found: String,
        /// Where it was found.
        at: String,
    },
    /// Chunks missing or inconsistent.
    #[error("record chunks are incomplete or inconsistent: {0}")]
    Chunks(&'static str),
    /// Too many devices, endpoints or readers.
    #[error("record has too many {0}")]
    TooMany(&'static str),
}

/// The DNS owner name of an identity's master record.
pub fn master_name(namespace: &str) -> String {
    format!("{LABEL}.{namespace}")
}

/// The DNS owner name of a device record.
pub fn device_name(namespace: &str, device: &str) -> String {
    format!("{LABEL}.{device}.{namespace}")
}

/// The DNS owner name of an identity's trust record.
pub fn trust_name(namespace: &str) -> String {
    format!("{LABEL}-trust.{namespace}")
}

/// Every name a device publishes at, so every name its TSIG key needs to update (and
/// should be allowed to update, in the zone's ACL): its device record, and on the
/// device that holds the identity's seed (`with_master`), the master and trust records.
pub fn update_names(namespace: &str, device: &str, with_master: bool) -> Vec<String> {
    let mut names = vec![device_name(namespace, device)];
    if with_master {
        names.push(master_name(namespace));
        names.push(trust_name(namespace));
    }
    names
}

/// A short printable ID of a key (for logs): base32 of 5 bytes of its hash.
pub fn key_id(key: &[u8; 32]) -> String {
    base32(&blake3::hash(key).as_bytes()[..5])
}
