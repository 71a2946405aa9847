//! A device request: a device asking to join an identity's roster, one labeled line
//! made on the device and carried to the machine that holds the identity's seed.
//!
//! ```text
//! "portdistrict-dev1:" base64url(version u8 (1) | namespace str | name str
//!   | signing key [32] | ECDH key [32] | signature [64] by the device's signing key
//!   over "portdistrict-dev1\0" || all before it)
//! ```

use super::codec::check_label;
use super::{DeviceKeys, DevicePublic, RecordError};
use crate::codec::{BlobError, Label, Reader, Writer};
use ring::signature::{UnparsedPublicKey, ED25519};

/// The label of device requests.
pub const DEVICE_REQUEST_PREFIX: &str = REQUEST_LABEL.prefix();
const REQUEST_LABEL: Label = Label::new("portdistrict-dev1:");
const DEVICE_REQUEST_CONTEXT: &[u8] = b"portdistrict-dev1\0";

/// A device asking to join an identity's roster (made on the device, carried to the
/// machine holding the identity's seed): namespace, name, public keys, signed by the
/// device's own signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    /// The identity's namespace.
    pub namespace: String,
    /// The device.
    pub device: DevicePublic,
}

impl DeviceRequest {
    /// The request line of `keys` named `name` for `namespace`.
    pub fn encode(keys: &DeviceKeys, namespace: &str, name: &str) -> Result<String, RecordError> {
        check_label(name)?;
        let d = keys.public(name);
        let mut b = Writer::new();
        b.u8(1)
            .str(namespace)
            .str(name)
            .bytes(&d.signing)
            .bytes(&d.ecdh);
        let mut m = Writer::after(DEVICE_REQUEST_CONTEXT);
        m.bytes(b.as_bytes());
        b.bytes(keys.signing().sign(m.as_bytes()).as_ref());
        Ok(REQUEST_LABEL.encode(b.as_bytes()))
    }

    /// Decodes and checks a request line.
    pub fn decode(text: &str) -> Result<DeviceRequest, RecordError> {
        let raw = REQUEST_LABEL.decode(text).map_err(|e| match e {
            BlobError::Foreign | BlobError::Later(_) => {
                RecordError::Malformed("not a device request (portdistrict-dev1:...)")
            }
            BlobError::Base64(_) => RecordError::Malformed("the device request is not base64url"),
        })?;
        let mut r = Reader::new(&raw);
        let v = r.u8("version")?;
        if v != 1 {
            return Err(RecordError::Version(v));
        }
        let namespace = r.str("namespace")?;
        let name = r.str("device name")?;
        check_label(&name)?;
        let signing: [u8; 32] = r.array("signing key")?;
        let ecdh: [u8; 32] = r.array("ECDH key")?;
        let body_len = r.consumed();
        let sig = r.bytes(64, "signature")?;
        if !r.is_empty() {
            return Err(RecordError::Malformed("bytes after the signature"));
        }
        let mut m = Writer::after(DEVICE_REQUEST_CONTEXT);
        m.bytes(&raw[..body_len]);
        UnparsedPublicKey::new(&ED25519, &signing)
            .verify(m.as_bytes(), sig)
            .map_err(|_| RecordError::Signature)?;
        Ok(DeviceRequest {
            namespace,
            device: DevicePublic {
                name,
                signing,
                ecdh,
            },
        })
    }
}
