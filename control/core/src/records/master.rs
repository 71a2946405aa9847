//! The master record: the roster of an identity's devices, signed by the master key.
//!
//! ```text
//! kind 1 | version | issued u64 | expires u64 | namespace str | count u8 (<= 64)
//! | count x (name str | signing key [32] | ECDH key [32] | delegation [64])
//! | signature [64]
//! ```

use super::codec::{check_label, check_signed, finish, head, KIND_MASTER};
use super::{master_name, Delegation, DevicePublic, RecordError, MAX_DEVICES};
use crate::codec::Reader;
use ring::signature::Ed25519KeyPair;

/// The master record: the roster of an identity's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterRecord {
    /// The identity's namespace.
    pub namespace: String,
    /// Issued, Unix seconds.
    pub issued: u64,
    /// Expires, Unix seconds.
    pub expires: u64,
    /// The delegated devices.
    pub devices: Vec<Delegation>,
}

impl MasterRecord {
    /// The signed bytes (signature by the master key).
    pub fn sign(&self, master: &Ed25519KeyPair) -> Result<Vec<u8>, RecordError> {
        if self.devices.len() > MAX_DEVICES {
            return Err(RecordError::TooMany("devices"));
        }
        let mut b = head(KIND_MASTER, self.issued, self.expires);
        b.str(&self.namespace)
            .u8(u8::try_from(self.devices.len()).expect("<= 64"));
        for d in &self.devices {
            check_label(&d.device.name)?;
            b.str(&d.device.name)
                .bytes(&d.device.signing)
                .bytes(&d.device.ecdh)
                .bytes(&d.signature);
        }
        Ok(finish(b, &master_name(&self.namespace), master))
    }

    /// Parses and verifies signed bytes found at `at` against `master`, at `now`.
    pub fn verify(
        bytes: &[u8],
        at: &str,
        master: &[u8; 32],
        now: u64,
    ) -> Result<MasterRecord, RecordError> {
        let (body, kind) = check_signed(bytes, at, master)?;
        if kind != KIND_MASTER {
            return Err(RecordError::Malformed("not a master record"));
        }
        let mut r = Reader::new(body);
        let (issued, expires) = (r.u64("issued")?, r.u64("expires")?);
        let namespace = r.str("namespace")?;
        let n = usize::from(r.u8("device count")?);
        if n > MAX_DEVICES {
            return Err(RecordError::TooMany("devices"));
        }
        let mut devices = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str("device name")?;
            check_label(&name)?;
            let d = Delegation {
                device: DevicePublic {
                    name,
                    signing: r.array("signing key")?,
                    ecdh: r.array("ECDH key")?,
                },
                signature: r.array("delegation")?,
            };
            d.verify(master, &namespace)?;
            devices.push(d);
        }
        if !r.is_empty() {
            return Err(RecordError::Malformed("bytes after the last device"));
        }
        let rec = MasterRecord {
            namespace,
            issued,
            expires,
            devices,
        };
        if master_name(&rec.namespace) != at {
            return Err(RecordError::WrongName {
                found: master_name(&rec.namespace),
                at: at.to_owned(),
            });
        }
        if now >= rec.expires {
            return Err(RecordError::Expired(rec.expires));
        }
        Ok(rec)
    }
}
