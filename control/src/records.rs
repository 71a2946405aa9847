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

use crate::identity::base32;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use rand_core::{CryptoRng, RngCore};
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use std::net::{IpAddr, SocketAddr};
use zeroize::Zeroizing;

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

const SIG_CONTEXT: &[u8] = b"portdistrict record v1\0";
const DELEGATION_CONTEXT: &[u8] = b"portdistrict delegation v1\0";
const SLOT_CONTEXT: &str = "portdistrict 2026-11 record key slot";
const DEVICE_SIGN_CONTEXT: &str = "portdistrict 2026-11 device signing ed25519";
const DEVICE_ECDH_CONTEXT: &str = "portdistrict 2026-11 device ecdh x25519";
const DEVICE_WG_CONTEXT: &str = "portdistrict 2026-11 device wireguard x25519";
const KIND_MASTER: u8 = 1;
const KIND_DEVICE: u8 = 2;

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
    let mut m = DELEGATION_CONTEXT.to_vec();
    put_str(&mut m, namespace);
    put_str(&mut m, &d.name);
    m.extend_from_slice(&d.signing);
    m.extend_from_slice(&d.ecdh);
    m
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
}

/// The DNS owner name of an identity's master record.
pub fn master_name(namespace: &str) -> String {
    format!("{LABEL}.{namespace}")
}

/// The DNS owner name of a device record.
pub fn device_name(namespace: &str, device: &str) -> String {
    format!("{LABEL}.{device}.{namespace}")
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

/// A device's subnet number from its name (1..=65535; the /64 inside the /48).
pub fn subnet_of(device: &str) -> u16 {
    let h = blake3::hash(device.as_bytes());
    let n = u16::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1]]);
    n.max(1)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&s.as_bytes()[..s.len().min(255)]);
}

/// A reader over a byte slice that never panics.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Malformed("it ends early"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        Ok(self.take(N)?.try_into().expect("N"))
    }
    fn str(&mut self) -> Result<String, RecordError> {
        let n = usize::from(self.u8()?);
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| RecordError::Malformed("a name is not text"))
    }
}

fn check_label(s: &str) -> Result<(), RecordError> {
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

impl MasterRecord {
    /// The signed bytes (signature by the master key).
    pub fn sign(&self, master: &Ed25519KeyPair) -> Result<Vec<u8>, RecordError> {
        if self.devices.len() > MAX_DEVICES {
            return Err(RecordError::TooMany("devices"));
        }
        let mut b = vec![KIND_MASTER, RECORD_VERSION];
        b.extend_from_slice(&self.issued.to_be_bytes());
        b.extend_from_slice(&self.expires.to_be_bytes());
        put_str(&mut b, &self.namespace);
        b.push(u8::try_from(self.devices.len()).expect("<= 64"));
        for d in &self.devices {
            check_label(&d.device.name)?;
            put_str(&mut b, &d.device.name);
            b.extend_from_slice(&d.device.signing);
            b.extend_from_slice(&d.device.ecdh);
            b.extend_from_slice(&d.signature);
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
        let mut r = Reader(body);
        let (issued, expires) = (r.u64()?, r.u64()?);
        let namespace = r.str()?;
        let n = usize::from(r.u8()?);
        if n > MAX_DEVICES {
            return Err(RecordError::TooMany("devices"));
        }
        let mut devices = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str()?;
            check_label(&name)?;
            let d = Delegation {
                device: DevicePublic {
                    name,
                    signing: r.array()?,
                    ecdh: r.array()?,
                },
                signature: r.array()?,
            };
            d.verify(master, &namespace)?;
            devices.push(d);
        }
        if !r.0.is_empty() {
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

impl DeviceRecord {
    /// The signed bytes (signature by the device's signing key).
    pub fn sign(&self, device: &Ed25519KeyPair) -> Result<Vec<u8>, RecordError> {
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(RecordError::TooMany("endpoints"));
        }
        check_label(&self.device)?;
        let mut b = vec![KIND_DEVICE, RECORD_VERSION];
        b.extend_from_slice(&self.issued.to_be_bytes());
        b.extend_from_slice(&self.expires.to_be_bytes());
        put_str(&mut b, &self.namespace);
        put_str(&mut b, &self.device);
        b.extend_from_slice(&self.wg_key);
        b.extend_from_slice(&self.subnet.to_be_bytes());
        b.push(u8::try_from(self.endpoints.len()).expect("<= 16"));
        for e in &self.endpoints {
            match e.ip() {
                IpAddr::V4(a) => {
                    b.push(4);
                    b.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    b.push(6);
                    b.extend_from_slice(&a.octets());
                }
            }
            b.extend_from_slice(&e.port().to_be_bytes());
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
        let mut peek = Reader(&bytes[18..]);
        let namespace = peek.str()?;
        let device = peek.str()?;
        let delegated = roster
            .devices
            .iter()
            .find(|d| d.device.name == device && roster.namespace == namespace)
            .ok_or_else(|| RecordError::NotDelegated(device.clone()))?;
        let (body, kind) = check_signed(bytes, at, &delegated.device.signing)?;
        if kind != KIND_DEVICE {
            return Err(RecordError::Malformed("not a device record"));
        }
        let mut r = Reader(body);
        let (issued, expires) = (r.u64()?, r.u64()?);
        let (_, _) = (r.str()?, r.str()?);
        let wg_key = r.array()?;
        let subnet = r.u16()?;
        let n = usize::from(r.u8()?);
        if n > MAX_ENDPOINTS {
            return Err(RecordError::TooMany("endpoints"));
        }
        let mut endpoints = Vec::with_capacity(n);
        for _ in 0..n {
            let ip = match r.u8()? {
                4 => IpAddr::from(r.array::<4>()?),
                6 => IpAddr::from(r.array::<16>()?),
                _ => return Err(RecordError::Malformed("endpoint family must be 4 or 6")),
            };
            endpoints.push(SocketAddr::new(ip, r.u16()?));
        }
        if !r.0.is_empty() {
            return Err(RecordError::Malformed("bytes after the last endpoint"));
        }
        let rec = DeviceRecord {
            namespace,
            device,
            issued,
            expires,
            wg_key,
            subnet,
            endpoints,
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

/// The DNS owner name of an identity's trust record.
pub fn trust_name(namespace: &str) -> String {
    format!("{LABEL}-trust.{namespace}")
}

const KIND_TRUST: u8 = 3;
/// Most peers in one trust record.
pub const MAX_TRUSTED: usize = 1024;

/// The trust record: the identity's TRUSTED peers, for its own devices only (sealed
/// to them), so that devices without the identity's seed know whom to connect to and
/// whom to publish for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRecord {
    /// The identity's namespace.
    pub namespace: String,
    /// Issued, Unix seconds.
    pub issued: u64,
    /// Expires, Unix seconds.
    pub expires: u64,
    /// The trusted peers.
    pub peers: Vec<crate::identity::PublicIdentity>,
}

impl TrustRecord {
    /// The signed bytes (signature by the master key).
    pub fn sign(&self, master: &Ed25519KeyPair) -> Result<Vec<u8>, RecordError> {
        if self.peers.len() > MAX_TRUSTED {
            return Err(RecordError::TooMany("trusted peers"));
        }
        let mut b = vec![KIND_TRUST, RECORD_VERSION];
        b.extend_from_slice(&self.issued.to_be_bytes());
        b.extend_from_slice(&self.expires.to_be_bytes());
        put_str(&mut b, &self.namespace);
        b.extend_from_slice(
            &u16::try_from(self.peers.len())
                .expect("<= 1024")
                .to_be_bytes(),
        );
        for p in &self.peers {
            put_str(&mut b, &p.namespace);
            b.extend_from_slice(&p.master);
            b.extend_from_slice(&p.ecdh);
        }
        Ok(finish(b, &trust_name(&self.namespace), master))
    }

    /// Parses and verifies signed bytes found at `at` against `master`, at `now`.
    pub fn verify(
        bytes: &[u8],
        at: &str,
        master: &[u8; 32],
        now: u64,
    ) -> Result<TrustRecord, RecordError> {
        let (body, kind) = check_signed(bytes, at, master)?;
        if kind != KIND_TRUST {
            return Err(RecordError::Malformed("not a trust record"));
        }
        let mut r = Reader(body);
        let (issued, expires) = (r.u64()?, r.u64()?);
        let namespace = r.str()?;
        let n = usize::from(r.u16()?);
        if n > MAX_TRUSTED {
            return Err(RecordError::TooMany("trusted peers"));
        }
        let mut peers = Vec::with_capacity(n);
        for _ in 0..n {
            let ns = r.str()?;
            crate::identity::check_namespace(&ns)
                .map_err(|_| RecordError::Malformed("a peer namespace is not a DNS name"))?;
            peers.push(crate::identity::PublicIdentity {
                namespace: ns,
                master: r.array()?,
                ecdh: r.array()?,
            });
        }
        if !r.0.is_empty() {
            return Err(RecordError::Malformed("bytes after the last peer"));
        }
        if trust_name(&namespace) != at {
            return Err(RecordError::WrongName {
                found: trust_name(&namespace),
                at: at.to_owned(),
            });
        }
        if now >= expires {
            return Err(RecordError::Expired(expires));
        }
        Ok(TrustRecord {
            namespace,
            issued,
            expires,
            peers,
        })
    }
}

/// The label of device requests.
pub const DEVICE_REQUEST_PREFIX: &str = "portdistrict-dev1:";
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
        use base64::Engine as _;
        check_label(name)?;
        let d = keys.public(name);
        let mut b = vec![1u8];
        put_str(&mut b, namespace);
        put_str(&mut b, name);
        b.extend_from_slice(&d.signing);
        b.extend_from_slice(&d.ecdh);
        let mut m = DEVICE_REQUEST_CONTEXT.to_vec();
        m.extend_from_slice(&b);
        b.extend_from_slice(keys.signing().sign(&m).as_ref());
        Ok(format!(
            "{DEVICE_REQUEST_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        ))
    }

    /// Decodes and checks a request line.
    pub fn decode(text: &str) -> Result<DeviceRequest, RecordError> {
        use base64::Engine as _;
        let b64 = text
            .trim()
            .strip_prefix(DEVICE_REQUEST_PREFIX)
            .ok_or(RecordError::Malformed(
                "not a device request (portdistrict-dev1:...)",
            ))?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| RecordError::Malformed("the device request is not base64url"))?;
        let mut r = Reader(&raw);
        let v = r.u8()?;
        if v != 1 {
            return Err(RecordError::Version(v));
        }
        let namespace = r.str()?;
        let name = r.str()?;
        check_label(&name)?;
        let signing: [u8; 32] = r.array()?;
        let ecdh: [u8; 32] = r.array()?;
        let body_len = raw.len() - r.0.len();
        let sig = r.take(64)?;
        if !r.0.is_empty() {
            return Err(RecordError::Malformed("bytes after the signature"));
        }
        let mut m = DEVICE_REQUEST_CONTEXT.to_vec();
        m.extend_from_slice(&raw[..body_len]);
        UnparsedPublicKey::new(&ED25519, &signing)
            .verify(&m, sig)
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

/// Appends the signature over the context, the owner name and `body`.
fn finish(mut body: Vec<u8>, owner: &str, key: &Ed25519KeyPair) -> Vec<u8> {
    let sig = key.sign(&signed_message(owner, &body));
    body.extend_from_slice(sig.as_ref());
    body
}

fn signed_message(owner: &str, body: &[u8]) -> Vec<u8> {
    let mut m = SIG_CONTEXT.to_vec();
    put_str(&mut m, owner);
    m.extend_from_slice(body);
    m
}

/// Checks version and signature; returns the body after kind and version, and the kind.
fn check_signed<'a>(
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

fn slot_key(shared: &[u8; 32], eph: &[u8; 32], recipient: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut h = blake3::Hasher::new_derive_key(SLOT_CONTEXT);
    h.update(shared);
    h.update(eph);
    h.update(recipient);
    Zeroizing::new(*h.finalize().as_bytes())
}

/// Encrypts `signed` (a signed record published at `owner`) to `readers` (X25519
/// public keys): a random content key, one key slot per reader.
pub fn seal<R: RngCore + CryptoRng>(
    signed: &[u8],
    owner: &str,
    readers: &[[u8; 32]],
    rng: &mut R,
) -> Result<Vec<u8>, RecordError> {
    if readers.len() > MAX_READERS {
        return Err(RecordError::TooMany("readers"));
    }
    let mut content_key = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut *content_key);
    let mut out = vec![ENVELOPE_VERSION];
    out.extend_from_slice(&u16::try_from(readers.len()).expect("<= 4096").to_be_bytes());
    for r in readers {
        let eph = x25519_dalek::StaticSecret::random_from_rng(&mut *rng);
        let eph_pub = x25519_dalek::PublicKey::from(&eph).to_bytes();
        let shared = eph.diffie_hellman(&x25519_dalek::PublicKey::from(*r));
        let kek = slot_key(shared.as_bytes(), &eph_pub, r);
        let wrapped = chacha20poly1305::ChaCha20Poly1305::new((&*kek).into())
            .encrypt(&[0u8; 12].into(), &content_key[..])
            .map_err(|_| RecordError::Malformed("sealing failed"))?;
        out.extend_from_slice(&eph_pub);
        out.extend_from_slice(&wrapped);
    }
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let body = chacha20poly1305::ChaCha20Poly1305::new((&*content_key).into())
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: signed,
                aad: owner.as_bytes(),
            },
        )
        .map_err(|_| RecordError::Malformed("sealing failed"))?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens an envelope found at `owner` with our X25519 secret.
pub fn open(
    envelope: &[u8],
    owner: &str,
    ours: &x25519_dalek::StaticSecret,
) -> Result<Vec<u8>, RecordError> {
    let mut r = Reader(envelope);
    let v = r.u8()?;
    if v != ENVELOPE_VERSION {
        return Err(RecordError::Version(v));
    }
    let n = usize::from(r.u16()?);
    if n > MAX_READERS {
        return Err(RecordError::TooMany("readers"));
    }
    let our_pub = x25519_dalek::PublicKey::from(ours).to_bytes();
    let mut content_key = None;
    for _ in 0..n {
        let eph: [u8; 32] = r.array()?;
        let wrapped = r.take(48)?;
        if content_key.is_some() {
            continue;
        }
        let shared = ours.diffie_hellman(&x25519_dalek::PublicKey::from(eph));
        let kek = slot_key(shared.as_bytes(), &eph, &our_pub);
        if let Ok(k) = chacha20poly1305::ChaCha20Poly1305::new((&*kek).into())
            .decrypt(&[0u8; 12].into(), wrapped)
        {
            content_key = Some(Zeroizing::new(k));
        }
    }
    let nonce: [u8; 12] = r.array()?;
    let key = content_key.ok_or(RecordError::NotForUs)?;
    let key: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| RecordError::Altered)?;
    chacha20poly1305::ChaCha20Poly1305::new((&key).into())
        .decrypt(
            (&nonce).into(),
            Payload {
                msg: r.0,
                aad: owner.as_bytes(),
            },
        )
        .map_err(|_| RecordError::Altered)
}

/// The TXT records (each a list of strings of at most 255 bytes) that carry
/// `envelope`: base64url in chunks of [`CHUNK`] characters, each prefixed `pd1 I/N `.
pub fn to_txt(envelope: &[u8]) -> Vec<Vec<String>> {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(envelope);
    let chunks: Vec<&str> = text
        .as_bytes()
        .chunks(CHUNK)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    let n = chunks.len().max(1);
    (0..n)
        .map(|i| {
            let s = format!("pd1 {}/{n} {}", i + 1, chunks.get(i).copied().unwrap_or(""));
            s.as_bytes()
                .chunks(255)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect()
        })
        .collect()
}

/// Puts an envelope back together from the TXT records found at a name (in any
/// order; each record's strings concatenated).
pub fn from_txt(records: &[Vec<String>]) -> Result<Vec<u8>, RecordError> {
    use base64::Engine as _;
    let mut parts: Vec<(usize, usize, String)> = Vec::new();
    for rec in records {
        let joined: String = rec.concat();
        let Some(rest) = joined.strip_prefix("pd1 ") else {
            continue; // somebody else's TXT record at this name
        };
        let (idx, payload) = rest
            .split_once(' ')
            .ok_or(RecordError::Chunks("no index"))?;
        let (i, n) = idx
            .split_once('/')
            .ok_or(RecordError::Chunks("bad index"))?;
        let (i, n): (usize, usize) = (
            i.parse().map_err(|_| RecordError::Chunks("bad index"))?,
            n.parse().map_err(|_| RecordError::Chunks("bad index"))?,
        );
        if i == 0 || i > n || n > 64 {
            return Err(RecordError::Chunks("index out of range"));
        }
        parts.push((i, n, payload.to_owned()));
    }
    let Some(&(_, n, _)) = parts.first() else {
        return Err(RecordError::Chunks("no portdistrict record at this name"));
    };
    if parts.iter().any(|p| p.1 != n) {
        return Err(RecordError::Chunks("chunks of different records"));
    }
    parts.sort_by_key(|p| p.0);
    parts.dedup_by_key(|p| p.0);
    if parts.len() != n {
        return Err(RecordError::Chunks("a chunk is missing"));
    }
    let text: String = parts.into_iter().map(|p| p.2).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| RecordError::Chunks("not base64url"))
}

/// A short printable ID of a key (for logs): base32 of 5 bytes of its hash.
pub fn key_id(key: &[u8; 32]) -> String {
    base32(&blake3::hash(key).as_bytes()[..5])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Seed;
    use rand_core::SeedableRng as _;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::from_seed([42; 32])
    }

    pub(crate) fn alice_roster() -> (Seed, DeviceKeys, MasterRecord) {
        let alice = Seed::from_bytes([1; 32]);
        let laptop = DeviceKeys::from_seed([11; 32]);
        let d = Delegation::sign(&alice.master(), "alice.pd.test", laptop.public("laptop"));
        let roster = MasterRecord {
            namespace: "alice.pd.test".into(),
            issued: 1_800_000_000,
            expires: 1_800_086_400,
            devices: vec![d],
        };
        (alice, laptop, roster)
    }

    #[test]
    fn a_device_updates_only_its_own_names() {
        assert_eq!(
            update_names("bob.pd.test", "desk", false),
            ["_portdistrict.desk.bob.pd.test"]
        );
        assert_eq!(
            update_names("alice.pd.test", "laptop", true),
            [
                "_portdistrict.laptop.alice.pd.test",
                "_portdistrict.alice.pd.test",
                "_portdistrict-trust.alice.pd.test"
            ]
        );
    }

    #[test]
    fn master_and_device_records_round_trip_through_envelope_and_txt() {
        let (alice, laptop, roster) = alice_roster();
        let bob = Seed::from_bytes([2; 32]);
        let bob_pub = bob.public("bob.pd.test").unwrap().ecdh;
        let name = master_name("alice.pd.test");
        let signed = roster.sign(&alice.master()).unwrap();
        let env = seal(&signed, &name, &[bob_pub], &mut rng()).unwrap();
        let txt = to_txt(&env);
        assert!(txt.iter().flatten().all(|s| s.len() <= 255));
        let back = from_txt(&txt).unwrap();
        assert_eq!(back, env);
        let plain = open(&back, &name, &bob.ecdh()).unwrap();
        let master = alice.public("alice.pd.test").unwrap().master;
        assert_eq!(
            MasterRecord::verify(&plain, &name, &master, 1_800_000_001).unwrap(),
            roster
        );

        let rec = DeviceRecord {
            namespace: "alice.pd.test".into(),
            device: "laptop".into(),
            issued: 1_800_000_000,
            expires: 1_800_003_600,
            wg_key: [7; 32],
            subnet: subnet_of("laptop"),
            endpoints: vec![
                "192.0.2.1:51820".parse().unwrap(),
                "[2001:db8::1]:51820".parse().unwrap(),
            ],
        };
        let dname = device_name("alice.pd.test", "laptop");
        let signed = rec.sign(&laptop.signing()).unwrap();
        let env = seal(
            &signed,
            &dname,
            &[bob_pub, laptop.public("laptop").ecdh],
            &mut rng(),
        )
        .unwrap();
        let plain = open(&from_txt(&to_txt(&env)).unwrap(), &dname, &bob.ecdh()).unwrap();
        assert_eq!(
            DeviceRecord::verify(&plain, &dname, &roster, 1_800_000_001).unwrap(),
            rec
        );
        // The device itself is a reader too.
        assert!(open(&env, &dname, &laptop.ecdh()).is_ok());
    }

    #[test]
    fn only_readers_open_and_every_alteration_is_caught() {
        let (alice, _laptop, roster) = alice_roster();
        let bob = Seed::from_bytes([2; 32]);
        let eve = Seed::from_bytes([3; 32]);
        let name = master_name("alice.pd.test");
        let signed = roster.sign(&alice.master()).unwrap();
        let env = seal(
            &signed,
            &name,
            &[bob.public("b.pd.test").unwrap().ecdh],
            &mut rng(),
        )
        .unwrap();
        assert_eq!(open(&env, &name, &eve.ecdh()), Err(RecordError::NotForUs));
        // Found at another name: the ciphertext is bound to its owner name.
        assert_eq!(
            open(&env, &master_name("mallory.pd.test"), &bob.ecdh()),
            Err(RecordError::Altered)
        );
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 1;
            assert!(open(&bad, &name, &bob.ecdh()).is_err(), "byte {i}");
        }
        // A signed record altered anywhere fails its signature (or its parse).
        let master = alice.public("alice.pd.test").unwrap().master;
        for i in 0..signed.len() {
            let mut bad = signed.clone();
            bad[i] ^= 1;
            assert!(
                MasterRecord::verify(&bad, &name, &master, 1_800_000_001).is_err(),
                "byte {i}"
            );
        }
        assert_eq!(
            MasterRecord::verify(&signed, &name, &master, 1_800_086_400),
            Err(RecordError::Expired(1_800_086_400))
        );
        // Signed by someone else.
        let other = Seed::from_bytes([9; 32])
            .public("alice.pd.test")
            .unwrap()
            .master;
        assert_eq!(
            MasterRecord::verify(&signed, &name, &other, 1_800_000_001),
            Err(RecordError::Signature)
        );
    }

    #[test]
    fn a_device_outside_the_roster_is_refused() {
        let (_alice, _laptop, roster) = alice_roster();
        let intruder = DeviceKeys::from_seed([66; 32]);
        let rec = DeviceRecord {
            namespace: "alice.pd.test".into(),
            device: "phone".into(),
            issued: 1,
            expires: u64::MAX,
            wg_key: [7; 32],
            subnet: 5,
            endpoints: vec![],
        };
        let signed = rec.sign(&intruder.signing()).unwrap();
        let at = device_name("alice.pd.test", "phone");
        assert_eq!(
            DeviceRecord::verify(&signed, &at, &roster, 2),
            Err(RecordError::NotDelegated("phone".into()))
        );
        // Claiming the laptop's name with the intruder's key fails the signature.
        let mut as_laptop = rec.clone();
        as_laptop.device = "laptop".into();
        let signed = as_laptop.sign(&intruder.signing()).unwrap();
        let at = device_name("alice.pd.test", "laptop");
        assert_eq!(
            DeviceRecord::verify(&signed, &at, &roster, 2),
            Err(RecordError::Signature)
        );
    }

    #[test]
    fn trust_records_and_device_requests_round_trip_and_refuse_alteration() {
        let alice = Seed::from_bytes([1; 32]);
        let master = alice.public("alice.pd.test").unwrap().master;
        let t = TrustRecord {
            namespace: "alice.pd.test".into(),
            issued: 1,
            expires: 100,
            peers: vec![Seed::from_bytes([2; 32]).public("bob.pd.test").unwrap()],
        };
        let at = trust_name("alice.pd.test");
        let signed = t.sign(&alice.master()).unwrap();
        assert_eq!(TrustRecord::verify(&signed, &at, &master, 2).unwrap(), t);
        for i in 0..signed.len() {
            let mut bad = signed.clone();
            bad[i] ^= 1;
            assert!(
                TrustRecord::verify(&bad, &at, &master, 2).is_err(),
                "byte {i}"
            );
        }
        // A master record is not a trust record, even when correctly signed.
        let (_, _, roster) = alice_roster();
        let m = roster.sign(&alice.master()).unwrap();
        assert!(TrustRecord::verify(&m, &master_name("alice.pd.test"), &master, 2).is_err());

        let phone = DeviceKeys::from_seed([12; 32]);
        let line = DeviceRequest::encode(&phone, "alice.pd.test", "phone").unwrap();
        let req = DeviceRequest::decode(&line).unwrap();
        assert_eq!(req.device, phone.public("phone"));
        assert_eq!(req.namespace, "alice.pd.test");
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&line[DEVICE_REQUEST_PREFIX.len()..])
            .unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 1;
            let text = format!(
                "{DEVICE_REQUEST_PREFIX}{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bad)
            );
            assert!(DeviceRequest::decode(&text).is_err(), "byte {i}");
        }
        assert!(DeviceRequest::encode(&phone, "alice.pd.test", "Bad Name").is_err());
    }

    #[test]
    fn chunks_reassemble_in_any_order_and_gaps_are_reported() {
        let env: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let mut txt = to_txt(&env);
        assert!(txt.len() > 1);
        txt.reverse();
        txt.push(vec!["v=spf1 -all".into()]);
        assert_eq!(from_txt(&txt).unwrap(), env);
        txt.remove(1);
        assert_eq!(
            from_txt(&txt),
            Err(RecordError::Chunks("a chunk is missing"))
        );
        assert!(from_txt(&[]).is_err());
        assert!(from_txt(&[vec!["pd1 0/1 AAAA".into()]]).is_err());
        assert!(from_txt(&[vec!["pd1 1/2 AAAA".into()], vec!["pd1 2/3 AAAA".into()]]).is_err());
    }

    #[test]
    fn parsers_never_panic_on_short_or_random_input() {
        let (alice, _l, roster) = alice_roster();
        let master = alice.public("alice.pd.test").unwrap().master;
        let eve = Seed::from_bytes([3; 32]).ecdh();
        let mut r = rng();
        for len in 0..300 {
            let mut b = vec![0u8; len];
            r.fill_bytes(&mut b);
            let _ = MasterRecord::verify(&b, "x", &master, 0);
            let _ = DeviceRecord::verify(&b, "x", &roster, 0);
            let _ = open(&b, "x", &eve);
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The golden vectors of docs/protocol.md, computed.
    fn golden() -> String {
        use crate::identity::{KdfParams, SealedSeed};
        use std::fmt::Write as _;
        let mut g = String::new();
        let alice = Seed::from_bytes([1; 32]);
        let p = alice.public("alice.pd.test").unwrap();
        let _ = writeln!(
            g,
            "identity seed            01 x 32, namespace alice.pd.test"
        );
        let _ = writeln!(g, "master public key        {}", hex(&p.master));
        let _ = writeln!(g, "identity-ECDH public key {}", hex(&p.ecdh));
        let _ = writeln!(g, "node ID                  {}", p.node_id());
        let _ = writeln!(g, "fingerprint              {}", p.fingerprint());
        let _ = writeln!(g, "overlay prefix           {}/48", p.overlay_prefix());
        let _ = writeln!(g, "bundle (created 1800000000)");
        let _ = writeln!(
            g,
            "  {}",
            alice.bundle("alice.pd.test", 1_800_000_000).unwrap()
        );
        let cheap = KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        };
        let sealed = SealedSeed::seal_with(
            &alice,
            b"correct horse battery staple",
            cheap,
            [5; 16],
            [6; 12],
        )
        .unwrap();
        let _ = writeln!(g, "sealed seed (passphrase \"correct horse battery staple\", m=64 KiB t=1 p=1, salt 05 x 16, nonce 06 x 12)");
        let _ = writeln!(g, "  {}", serde_json::to_string(&sealed).unwrap());
        let (alice, laptop, roster) = alice_roster();
        let lp = laptop.public("laptop");
        let _ = writeln!(g, "device seed              0b x 32, name laptop");
        let _ = writeln!(g, "device signing key       {}", hex(&lp.signing));
        let _ = writeln!(g, "device ECDH key          {}", hex(&lp.ecdh));
        let wg = portdistrict_wg::PrivateKey::from_bytes(laptop.wireguard()).public_key();
        let _ = writeln!(g, "device WireGuard key     {}", hex(wg.as_bytes()));
        let _ = writeln!(g, "device subnet            {:#06x}", subnet_of("laptop"));
        let signed = roster.sign(&alice.master()).unwrap();
        let _ = writeln!(
            g,
            "master record (issued 1800000000, expires 1800086400), signed"
        );
        for line in hex(&signed).as_bytes().chunks(64) {
            let _ = writeln!(g, "  {}", String::from_utf8_lossy(line));
        }
        let rec = DeviceRecord {
            namespace: "alice.pd.test".into(),
            device: "laptop".into(),
            issued: 1_800_000_000,
            expires: 1_800_003_600,
            wg_key: *wg.as_bytes(),
            subnet: subnet_of("laptop"),
            endpoints: vec![
                "192.0.2.1:51820".parse().unwrap(),
                "[2001:db8::1]:51820".parse().unwrap(),
            ],
        };
        let dsigned = rec.sign(&laptop.signing()).unwrap();
        let _ = writeln!(g, "device record (laptop, expires 1800003600, 192.0.2.1:51820 and [2001:db8::1]:51820), signed");
        for line in hex(&dsigned).as_bytes().chunks(64) {
            let _ = writeln!(g, "  {}", String::from_utf8_lossy(line));
        }
        let trust = TrustRecord {
            namespace: "alice.pd.test".into(),
            issued: 1_800_000_000,
            expires: 1_800_003_600,
            peers: vec![Seed::from_bytes([2; 32]).public("bob.pd.test").unwrap()],
        };
        let tsigned = trust.sign(&alice.master()).unwrap();
        let _ = writeln!(g, "trust record (bob trusted, expires 1800003600), signed");
        for line in hex(&tsigned).as_bytes().chunks(64) {
            let _ = writeln!(g, "  {}", String::from_utf8_lossy(line));
        }
        let phone = DeviceKeys::from_seed([12; 32]);
        let _ = writeln!(g, "device request (device seed 0c x 32, name phone)");
        let _ = writeln!(
            g,
            "  {}",
            DeviceRequest::encode(&phone, "alice.pd.test", "phone").unwrap()
        );
        let bob = Seed::from_bytes([2; 32])
            .public("bob.pd.test")
            .unwrap()
            .ecdh;
        let env = seal(&signed, &master_name("alice.pd.test"), &[bob], &mut rng()).unwrap();
        let _ = writeln!(g, "master record sealed to bob (seed 02 x 32) with ChaCha20Rng seed 2a x 32, as TXT at _portdistrict.alice.pd.test");
        for rr in to_txt(&env) {
            for s in rr {
                let _ = writeln!(g, "  \"{s}\"");
            }
        }
        g
    }

    #[test]
    fn docs_protocol_md_has_the_golden_vectors() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
        let doc = std::fs::read_to_string(&path).expect("docs/protocol.md");
        let (begin, end) = (
            "<!-- golden:begin -->\n```text\n",
            "```\n<!-- golden:end -->",
        );
        let want = golden();
        let (a, b) = (
            doc.find(begin).expect("golden:begin marker"),
            doc.find(end).expect("golden:end marker"),
        );
        let have = &doc[a + begin.len()..b];
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            let new = format!("{}{begin}{want}{}", &doc[..a], &doc[b..]);
            std::fs::write(&path, new).unwrap();
            return;
        }
        assert_eq!(
            have, want,
            "docs/protocol.md's golden vectors differ from the code; review, then UPDATE_GOLDEN=1"
        );
    }
}
