//! A device record: how to reach one device, signed by the device's own key (which
//! the master record delegates).
//!
//! ```text
//! kind 2 | version | issued u64 | expires u64 | namespace str | device str
//! | WireGuard key [32] | subnet u16 | count u8 (<= 16)
//! | count x endpoint (family u8 4|6, address [4|16], port u16)
//! [| 1 u8 | facilitator endpoint | facilitator WireGuard key [32]] | signature [64]
//! ```
//!
//! The facilitator part is present only when the device names one (so a record
//! without it is byte for byte what earlier versions wrote; one with it is refused
//! by them as "bytes after the last endpoint").

use super::codec::{check_label, check_signed, finish, head, KIND_DEVICE};
use super::{device_name, MasterRecord, RecordError, MAX_ENDPOINTS};
use crate::codec::Reader;
use ring::signature::Ed25519KeyPair;
use std::net::SocketAddr;

/// A device record: how to reach one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The identity's namespace.
    pub namespace: String,
    /// The device's name (its roster entry).
    pub device: String,
    /// Issued, Unix seconds.
    pub issued: u64,
    /// Expires, Unix seconds.
    pub expires: u64,
    /// Its WireGuard public key.
    pub wg_key: [u8; 32],
    /// Its /64 inside the identity's overlay /48 (the subnet number).
    pub subnet: u16,
    /// Where it listens.
    pub endpoints: Vec<SocketAddr>,
    /// The NAT-traversal facilitator it uses (endpoint and WireGuard key), where
    /// peers meet it.
    pub facilitator: Option<(SocketAddr, [u8; 32])>,
}

impl DeviceRecord {
    /// The signed bytes (signature by the device's signing key).
    pub fn sign(&self, device: &Ed25519KeyPair) -> Result<Vec<u8>, RecordError> {
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(RecordError::TooMany("endpoints"));
        }
        check_label(&self.device)?;
        let mut b = head(KIND_DEVICE, self.issued, self.expires);
        b.str(&self.namespace)
            .str(&self.device)
            .bytes(&self.wg_key)
            .u16(self.subnet)
            .u8(u8::try_from(self.endpoints.len()).expect("<= 16"));
        for e in &self.endpoints {
            b.socket_addr(*e);
        }
        if let Some((ep, key)) = self.facilitator {
            b.u8(1).socket_addr(ep).bytes(&key);
        }
        Ok(finish(
            b,
            &device_name(&self.namespace, &self.device),
            device,
        ))
    }

    /// Parses and verifies signed bytes found at `at` against the roster `master`
    /// (already verified), at `now`.
    pub fn verify(
        bytes: &[u8],
        at: &str,
        roster: &MasterRecord,
        now: u64,
    ) -> Result<DeviceRecord, RecordError> {
        // The signer is the roster's device named in the record: read the name first.
        if bytes.len() < 2 + 16 + 64 {
            return Err(RecordError::Malformed("it ends early"));
        }
        let mut peek = Reader::new(&bytes[18..]);
        let namespace = peek.str("namespace")?;
        let device = peek.str("device name")?;
        let delegated = roster
            .devices
            .iter()
            .find(|d| d.device.name == device && roster.namespace == namespace)
            .ok_or_else(|| RecordError::NotDelegated(device.clone()))?;
        let (body, kind) = check_signed(bytes, at, &delegated.device.signing)?;
        if kind != KIND_DEVICE {
            return Err(RecordError::Malformed("not a device record"));
        }
        let mut r = Reader::new(body);
        let (issued, expires) = (r.u64("issued")?, r.u64("expires")?);
        let (_, _) = (r.str("namespace")?, r.str("device name")?);
        let wg_key = r.array("WireGuard key")?;
        let subnet = r.u16("subnet")?;
        let n = usize::from(r.u8("endpoint count")?);
        if n > MAX_ENDPOINTS {
            return Err(RecordError::TooMany("endpoints"));
        }
        let mut endpoints = Vec::with_capacity(n);
        for _ in 0..n {
            endpoints.push(r.socket_addr("endpoint")?);
        }
        let facilitator = match r.rest().first() {
            None => None,
            Some(1) => {
                r.u8("facilitator flag")?;
                Some((
                    r.socket_addr("facilitator endpoint")?,
                    r.array("facilitator key")?,
                ))
            }
            Some(_) => return Err(RecordError::Malformed("bytes after the last endpoint")),
        };
        if !r.is_empty() {
            return Err(RecordError::Malformed("bytes after the facilitator"));
        }
        let rec = DeviceRecord {
            namespace,
            device,
            issued,
            expires,
            wg_key,
            subnet,
            endpoints,
            facilitator,
        };
        let name = device_name(&rec.namespace, &rec.device);
        if name != at {
            return Err(RecordError::WrongName {
                found: name,
                at: at.to_owned(),
            });
        }
        if now >= rec.expires {
            return Err(RecordError::Expired(rec.expires));
        }
        Ok(rec)
    }
}
