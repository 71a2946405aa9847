//! Device keys, derived from a device seed, and the master's delegations of devices.

use super::RecordError;
use crate::codec::Writer;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use zeroize::Zeroizing;

const DELEGATION_CONTEXT: &[u8] = b"portdistrict delegation v1\0";
const DEVICE_SIGN_CONTEXT: &str = "portdistrict 2026-11 device signing ed25519";
const DEVICE_ECDH_CONTEXT: &str = "portdistrict 2026-11 device ecdh x25519";
const DEVICE_WG_CONTEXT: &str = "portdistrict 2026-11 device wireguard x25519";

/// A device's keys, derived from its seed.
pub struct DeviceKeys {
    seed: Zeroizing<[u8; 32]>,
}

impl DeviceKeys {
    /// From a 32-byte device seed.
    pub fn from_seed(seed: [u8; 32]) -> DeviceKeys {
        DeviceKeys {
            seed: Zeroizing::new(seed),
        }
    }

    /// The seed (to store it).
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The device's signing key.
    pub fn signing(&self) -> Ed25519KeyPair {
        let s = Zeroizing::new(blake3::derive_key(DEVICE_SIGN_CONTEXT, &*self.seed));
        Ed25519KeyPair::from_seed_unchecked(&*s).expect("32-byte Ed25519 seed")
    }

    /// The device's ECDH secret (it reads records with it).
    pub fn ecdh(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(blake3::derive_key(DEVICE_ECDH_CONTEXT, &*self.seed))
    }

    /// The device's WireGuard private key.
    pub fn wireguard(&self) -> [u8; 32] {
        let mut k = blake3::derive_key(DEVICE_WG_CONTEXT, &*self.seed);
        // Clamped as X25519 private keys are.
        k[0] &= 248;
        k[31] &= 127;
        k[31] |= 64;
        k
    }

    /// The public half of the device, as the roster lists it.
    pub fn public(&self, name: &str) -> DevicePublic {
        DevicePublic {
            name: name.to_owned(),
            signing: self
                .signing()
                .public_key()
                .as_ref()
                .try_into()
                .expect("32 bytes"),
            ecdh: x25519_dalek::PublicKey::from(&self.ecdh()).to_bytes(),
        }
    }
}

/// A device as the roster lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePublic {
    /// Its name: one DNS label.
    pub name: String,
    /// Its signing public key.
    pub signing: [u8; 32],
    /// Its ECDH public key.
    pub ecdh: [u8; 32],
}

/// A roster entry: a device and the master's signature delegating it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// The device.
    pub device: DevicePublic,
    /// The master's signature over the namespace, the name and the keys.
    pub signature: [u8; 64],
}

fn delegation_message(namespace: &str, d: &DevicePublic) -> Vec<u8> {
    let mut m = Writer::after(DELEGATION_CONTEXT);
    m.str(namespace)
        .str(&d.name)
        .bytes(&d.signing)
        .bytes(&d.ecdh);
    m.into_bytes()
}

impl Delegation {
    /// The master delegates `device` in `namespace`.
    pub fn sign(master: &Ed25519KeyPair, namespace: &str, device: DevicePublic) -> Delegation {
        let sig = master.sign(&delegation_message(namespace, &device));
        Delegation {
            device,
            signature: sig.as_ref().try_into().expect("64 bytes"),
        }
    }

    /// Checks the delegation against the master public key.
    pub fn verify(&self, master: &[u8; 32], namespace: &str) -> Result<(), RecordError> {
        UnparsedPublicKey::new(&ED25519, master)
            .verify(
                &delegation_message(namespace, &self.device),
                &self.signature,
            )
            .map_err(|_| RecordError::Signature)
    }
}
