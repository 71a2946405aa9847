//! Identities: the pure part (sans-IO). A 32-byte seed gives the master Ed25519
//! keypair and, by BLAKE3 `derive_key`, a separate X25519 identity-ECDH keypair (never
//! a conversion of the Ed25519 key). The node ID is base32 (RFC 4648 alphabet,
//! lowercase, no padding) of the first 20 bytes of BLAKE3(master public key); the
//! fingerprint people compare out of band covers the master key, the ECDH key and the
//! namespace; the overlay /48 is derived from the node ID.
//!
//! An identity travels as one bundle line, `portdistrict-id1:` + base64url (no
//! padding) of:
//!
//! ```text
//! version u8 (1) | namespace length u8 | namespace | master public key [32]
//! | ECDH public key [32] | created u64 (Unix seconds, big-endian)
//! | Ed25519 signature [64] by the master key over "portdistrict-id1\0" || all before it
//! ```
//!
//! The seed is stored sealed: argon2id (the parameters are stored with it) turns the
//! passphrase into a key for ChaCha20-Poly1305 ([`SealedSeed`]).

use crate::codec::{BlobError, Label, Reader, Writer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use rand_core::{CryptoRng, RngCore};
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::net::Ipv6Addr;
use zeroize::Zeroizing;

/// The label of identity bundles.
pub const BUNDLE_PREFIX: &str = BUNDLE_LABEL.prefix();
const BUNDLE_LABEL: Label = Label::new("portdistrict-id1:");
/// The bundle format version this code writes and reads.
pub const BUNDLE_VERSION: u8 = 1;
const BUNDLE_SIG_CONTEXT: &[u8] = b"portdistrict-id1\0";
const ECDH_CONTEXT: &str = "portdistrict 2026-11 identity-ecdh x25519";
const FINGERPRINT_CONTEXT: &str = "portdistrict 2026-11 identity fingerprint";
const SEAL_AAD: &[u8] = b"portdistrict sealed seed v1";

/// Why an identity, a bundle or a sealed seed is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// A namespace that cannot be a DNS name we publish under.
    #[error("namespace {0:?} is not usable: give a DNS name of at least two labels (a-z, 0-9, '-', each 1-63 characters, 200 at most in all), like alice.example.net")]
    Namespace(String),
    /// Not starting with the bundle label.
    #[error("not an identity bundle: it must start with {BUNDLE_PREFIX:?}")]
    NotABundle,
    /// A later format version.
    #[error("identity bundle version {0} is newer than this portdistrict understands: upgrade portdistrict")]
    Version(u8),
    /// Not base64url.
    #[error("identity bundle is damaged: not base64url")]
    Base64,
    /// Ends early, or has bytes after the signature.
    #[error("identity bundle is damaged: {0}")]
    Malformed(&'static str),
    /// The signature does not verify.
    #[error("identity bundle signature does not verify: it was altered")]
    Signature,
    /// The passphrase does not open the sealed seed (or the file was altered).
    #[error("wrong passphrase (or the key file was altered)")]
    WrongPassphrase,
    /// A sealed seed with parameters we do not accept.
    #[error("sealed key: {0}")]
    Sealed(String),
}

/// A node's secret: 32 bytes, wiped when dropped.
pub struct Seed(Zeroizing<[u8; 32]>);

impl Seed {
    /// From raw bytes.
    pub fn from_bytes(b: [u8; 32]) -> Seed {
        Seed(Zeroizing::new(b))
    }

    /// A fresh random seed from `rng` (the caller's randomness: `OsRng` in the shell).
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Seed {
        let mut b = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *b);
        Seed(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The master Ed25519 keypair.
    pub fn master(&self) -> Ed25519KeyPair {
        // A 32-byte seed is always a valid Ed25519 private key.
        Ed25519KeyPair::from_seed_unchecked(&*self.0).expect("32-byte Ed25519 seed")
    }

    /// The X25519 identity-ECDH secret, derived with domain separation.
    pub fn ecdh(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(blake3::derive_key(ECDH_CONTEXT, &*self.0))
    }

    /// The public half with `namespace`.
    pub fn public(&self, namespace: &str) -> Result<PublicIdentity, IdentityError> {
        check_namespace(namespace)?;
        let master: [u8; 32] = self
            .master()
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public keys are 32 bytes");
        Ok(PublicIdentity {
            namespace: namespace.to_owned(),
            master,
            ecdh: x25519_dalek::PublicKey::from(&self.ecdh()).to_bytes(),
        })
    }

    /// The bundle line of this identity, created at `created`.
    pub fn bundle(&self, namespace: &str, created: u64) -> Result<String, IdentityError> {
        let p = self.public(namespace)?;
        let mut w = Writer::new();
        // The namespace was checked: at most 200 bytes, so its length fits the byte.
        w.u8(BUNDLE_VERSION)
            .str(namespace)
            .bytes(&p.master)
            .bytes(&p.ecdh)
            .u64(created);
        let sig = self.master().sign(&bundle_signed(w.as_bytes()));
        w.bytes(sig.as_ref());
        Ok(BUNDLE_LABEL.encode(w.as_bytes()))
    }
}

/// What a bundle's signature covers: the context, then the bundle before the signature.
fn bundle_signed(body: &[u8]) -> Vec<u8> {
    [BUNDLE_SIG_CONTEXT, body].concat()
}

/// Checks that `ns` is a lowercase DNS name of at least two labels.
pub fn check_namespace(ns: &str) -> Result<(), IdentityError> {
    let labels: Vec<&str> = ns.split('.').collect();
    let ok = ns.len() <= 200
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Namespace(ns.to_owned()))
    }
}

/// What others know of an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIdentity {
    /// The DNS namespace its records live under.
    pub namespace: String,
    /// The master Ed25519 public key.
    #[serde(with = "b64")]
    pub master: [u8; 32],
    /// The X25519 identity-ECDH public key.
    #[serde(with = "b64")]
    pub ecdh: [u8; 32],
}

/// Base32, RFC 4648 alphabet in lowercase, no padding.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

impl PublicIdentity {
    /// The node ID: base32 of the first 20 bytes of BLAKE3(master public key).
    pub fn node_id(&self) -> String {
        base32(&blake3::hash(&self.master).as_bytes()[..20])
    }

    /// What two people compare out of band: 24 base32 characters in groups of 4,
    /// over the master key, the ECDH key and the namespace.
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new_derive_key(FINGERPRINT_CONTEXT);
        h.update(&self.master);
        h.update(&self.ecdh);
        h.update(self.namespace.as_bytes());
        let b32 = base32(&h.finalize().as_bytes()[..15]);
        b32.as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("-")
    }

    /// The identity's overlay /48: `fd` + 40 bits derived from the node ID.
    pub fn overlay_prefix(&self) -> Ipv6Addr {
        crate::overlay::overlay_prefix(&self.node_id())
    }

    /// The /64 of device number `subnet` (1..=65535) inside the overlay /48.
    pub fn device_prefix(&self, subnet: u16) -> Ipv6Addr {
        crate::overlay::device_prefix(self.overlay_prefix(), subnet)
    }
}

/// A decoded, verified identity bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The identity it carries.
    pub identity: PublicIdentity,
    /// When it was made (Unix seconds).
    pub created: u64,
}

impl Bundle {
    /// Decodes and verifies a `portdistrict-id1:` line.
    pub fn decode(text: &str) -> Result<Bundle, IdentityError> {
        let raw = BUNDLE_LABEL.decode(text).map_err(|e| match e {
            BlobError::Foreign => IdentityError::NotABundle,
            BlobError::Later(v) => IdentityError::Version(v),
            BlobError::Base64(_) => IdentityError::Base64,
        })?;
        let mut r = Reader::new(&raw);
        let version = r
            .u8("version")
            .map_err(|_| IdentityError::Malformed("it is empty"))?;
        if version != BUNDLE_VERSION {
            return Err(IdentityError::Version(version));
        }
        let ns_len = usize::from(
            r.u8("namespace")
                .map_err(|_| IdentityError::Malformed("it ends before the namespace"))?,
        );
        let body_len = 2 + ns_len + 32 + 32 + 8;
        if raw.len() < body_len + 64 {
            return Err(IdentityError::Malformed("it ends early"));
        }
        if raw.len() > body_len + 64 {
            return Err(IdentityError::Malformed("bytes after the signature"));
        }
        // The lengths were checked: the reads below cannot end early.
        let early = |_| IdentityError::Malformed("it ends early");
        let namespace = std::str::from_utf8(r.bytes(ns_len, "namespace").map_err(early)?)
            .map_err(|_| IdentityError::Malformed("the namespace is not text"))?
            .to_owned();
        check_namespace(&namespace)?;
        let master: [u8; 32] = r.array("master key").map_err(early)?;
        let ecdh: [u8; 32] = r.array("ECDH key").map_err(early)?;
        let created = r.u64("creation time").map_err(early)?;
        UnparsedPublicKey::new(&ED25519, &master)
            .verify(&bundle_signed(&raw[..body_len]), r.rest())
            .map_err(|_| IdentityError::Signature)?;
        Ok(Bundle {
            identity: PublicIdentity {
                namespace,
                master,
                ecdh,
            },
            created,
        })
    }
}

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// What `identity init` uses: 64 MiB, 3 passes, 1 lane.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };

    fn key(&self, passphrase: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
        // Bounds: what a sealed file may ask of us (an altered file must not exhaust us).
        if !(8..=4 * 1024 * 1024).contains(&self.m_kib)
            || !(1..=16).contains(&self.t)
            || !(1..=8).contains(&self.p)
        {
            return Err(IdentityError::Sealed(format!(
                "argon2id parameters {self:?} are out of range"
            )));
        }
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| IdentityError::Sealed(e.to_string()))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; 32]);
        a.hash_password_into(passphrase, salt, &mut *key)
            .map_err(|e| IdentityError::Sealed(e.to_string()))?;
        Ok(key)
    }
}

/// A seed sealed under a passphrase, as stored (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSeed {
    /// Format version (1).
    pub version: u32,
    /// `argon2id`.
    pub kdf: String,
    /// Its parameters.
    pub params: KdfParams,
    /// 16 random bytes, base64url.
    pub salt: String,
    /// 12 random bytes, base64url.
    pub nonce: String,
    /// ChaCha20-Poly1305 of the seed, base64url.
    pub sealed: String,
}

impl SealedSeed {
    /// Seals `seed` under `passphrase` with fresh salt and nonce from `rng`.
    pub fn seal<R: RngCore + CryptoRng>(
        seed: &Seed,
        passphrase: &[u8],
        params: KdfParams,
        rng: &mut R,
    ) -> Result<SealedSeed, IdentityError> {
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut salt);
        rng.fill_bytes(&mut nonce);
        Self::seal_with(seed, passphrase, params, salt, nonce)
    }

    /// Seals with the given salt and nonce (golden tests).
    pub fn seal_with(
        seed: &Seed,
        passphrase: &[u8],
        params: KdfParams,
        salt: [u8; 16],
        nonce: [u8; 12],
    ) -> Result<SealedSeed, IdentityError> {
        let key = params.key(passphrase, &salt)?;
        let aead = chacha20poly1305::ChaCha20Poly1305::new((&*key).into());
        let sealed = aead
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: seed.as_bytes(),
                    aad: SEAL_AAD,
                },
            )
            .map_err(|_| IdentityError::Sealed("sealing failed".into()))?;
        Ok(SealedSeed {
            version: 1,
            kdf: "argon2id".into(),
            params,
            salt: URL_SAFE_NO_PAD.encode(salt),
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            sealed: URL_SAFE_NO_PAD.encode(sealed),
        })
    }

    /// Opens the seed with `passphrase`.
    pub fn open(&self, passphrase: &[u8]) -> Result<Seed, IdentityError> {
        if self.version != 1 || self.kdf != "argon2id" {
            return Err(IdentityError::Sealed(format!(
                "version {} / kdf {:?} unknown to this portdistrict: upgrade",
                self.version, self.kdf
            )));
        }
        let field = |name: &str, v: &str| {
            URL_SAFE_NO_PAD
                .decode(v)
                .map_err(|_| IdentityError::Sealed(format!("{name} is not base64url")))
        };
        let salt = field("salt", &self.salt)?;
        let nonce: [u8; 12] = field("nonce", &self.nonce)?
            .try_into()
            .map_err(|_| IdentityError::Sealed("nonce must be 12 bytes".into()))?;
        let sealed = field("sealed", &self.sealed)?;
        let key = self.params.key(passphrase, &salt)?;
        let aead = chacha20poly1305::ChaCha20Poly1305::new((&*key).into());
        let plain = Zeroizing::new(
            aead.decrypt(
                (&nonce).into(),
                Payload {
                    msg: &sealed,
                    aad: SEAL_AAD,
                },
            )
            .map_err(|_| IdentityError::WrongPassphrase)?,
        );
        let bytes: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| IdentityError::Sealed("the seed must be 32 bytes".into()))?;
        Ok(Seed::from_bytes(bytes))
    }
}

/// serde as base64url for 32-byte keys.
mod b64 {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("expected 32 bytes of base64url"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(b: u8) -> Seed {
        Seed::from_bytes([b; 32])
    }

    #[test]
    fn base32_matches_rfc4648_vectors() {
        // RFC 4648 section 10, lowercase, without padding.
        for (input, want) in [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            assert_eq!(base32(input.as_bytes()), want, "{input}");
        }
    }

    #[test]
    fn bundle_round_trips_and_carries_the_identity() {
        let s = seed(1);
        let line = s.bundle("alice.pd.test", 1_800_000_000).unwrap();
        assert!(line.starts_with(BUNDLE_PREFIX));
        let b = Bundle::decode(&line).unwrap();
        assert_eq!(b.identity, s.public("alice.pd.test").unwrap());
        assert_eq!(b.created, 1_800_000_000);
        assert_eq!(b.identity.node_id().len(), 32);
        assert_eq!(Bundle::decode(&format!("  {line}\n")).unwrap(), b);
    }

    #[test]
    fn every_altered_byte_of_a_bundle_is_refused() {
        let line = seed(2).bundle("bob.pd.test", 7).unwrap();
        let raw = URL_SAFE_NO_PAD
            .decode(&line[BUNDLE_PREFIX.len()..])
            .unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let text = format!("{BUNDLE_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bad));
            assert!(
                Bundle::decode(&text).is_err(),
                "byte {i} altered was accepted"
            );
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert_eq!(
            Bundle::decode(&format!(
                "{BUNDLE_PREFIX}{}",
                URL_SAFE_NO_PAD.encode(&longer)
            )),
            Err(IdentityError::Malformed("bytes after the signature"))
        );
        assert_eq!(
            Bundle::decode(&format!(
                "{BUNDLE_PREFIX}{}",
                URL_SAFE_NO_PAD.encode(&raw[..50])
            )),
            Err(IdentityError::Malformed("it ends early"))
        );
        assert_eq!(Bundle::decode("hello"), Err(IdentityError::NotABundle));
        assert_eq!(
            Bundle::decode("portdistrict-id2:AAAA"),
            Err(IdentityError::Version(2))
        );
        assert_eq!(
            Bundle::decode(&format!("{BUNDLE_PREFIX}!!")),
            Err(IdentityError::Base64)
        );
        let mut v2 = raw;
        v2[0] = 2;
        assert_eq!(
            Bundle::decode(&format!("{BUNDLE_PREFIX}{}", URL_SAFE_NO_PAD.encode(&v2))),
            Err(IdentityError::Version(2))
        );
    }

    #[test]
    fn derived_keys_are_separate_and_stable() {
        let s = seed(3);
        let p = s.public("carol.pd.test").unwrap();
        assert_ne!(p.master, p.ecdh, "the ECDH key is not the Ed25519 key");
        assert_eq!(p, seed(3).public("carol.pd.test").unwrap());
        assert_ne!(
            p.node_id(),
            seed(4).public("carol.pd.test").unwrap().node_id()
        );
        let fp = p.fingerprint();
        assert_eq!(fp.len(), 24 + 5);
        assert_eq!(fp.matches('-').count(), 5);
        // The namespace is part of the fingerprint, not of the node ID.
        let other_ns = seed(3).public("carol.example.org").unwrap();
        assert_ne!(other_ns.fingerprint(), fp);
        assert_eq!(other_ns.node_id(), p.node_id());
        let prefix = p.overlay_prefix().octets();
        assert_eq!(prefix[0], 0xfd);
        assert_eq!(prefix[6..], [0; 10]);
        let dev = p.device_prefix(0x0102).octets();
        assert_eq!(dev[..6], prefix[..6]);
        assert_eq!(dev[6..8], [1, 2]);
    }

    #[test]
    fn namespaces_must_be_dns_names() {
        for good in ["alice.pd.test", "a-1.example.net", "x.y"] {
            assert!(check_namespace(good).is_ok(), "{good}");
        }
        for bad in [
            "alice",
            "Alice.pd.test",
            "-a.pd.test",
            "a..b",
            "a.b.",
            "a b.c",
            &format!("{}.test", "a".repeat(64)),
        ] {
            let e = check_namespace(bad).unwrap_err();
            assert!(e.to_string().contains("DNS name"), "{bad}");
        }
    }

    #[test]
    fn a_sealed_seed_opens_only_with_its_passphrase() {
        let cheap = KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        };
        let s = seed(5);
        let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::from_seed([7; 32]);
        let sealed = SealedSeed::seal(&s, b"correct horse", cheap, &mut rng).unwrap();
        let again = SealedSeed::seal(&s, b"correct horse", cheap, &mut rng).unwrap();
        assert_ne!(again.salt, sealed.salt, "fresh salt each time");
        assert_ne!(again.nonce, sealed.nonce, "fresh nonce each time");
        assert_eq!(
            sealed.open(b"correct horse").unwrap().as_bytes(),
            s.as_bytes()
        );
        assert_eq!(
            sealed.open(b"wrong").err(),
            Some(IdentityError::WrongPassphrase)
        );
        let mut altered = sealed.clone();
        altered.params.t = 2;
        assert_eq!(
            altered.open(b"correct horse").err(),
            Some(IdentityError::WrongPassphrase)
        );
        let mut greedy = sealed.clone();
        greedy.params.m_kib = u32::MAX;
        assert!(matches!(
            greedy.open(b"correct horse"),
            Err(IdentityError::Sealed(_))
        ));
        let json = serde_json::to_string(&sealed).unwrap();
        assert_eq!(serde_json::from_str::<SealedSeed>(&json).unwrap(), sealed);
    }
}
