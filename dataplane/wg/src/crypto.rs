//! The primitives of WireGuard's Noise_IKpsk2 instantiation: BLAKE2s hashing, keyed
//! MAC, HMAC and HKDF, ChaCha20-Poly1305 (ring, and `portdistrict-aead` for groups of
//! transport messages) for the handshake and transport,
//! XChaCha20-Poly1305 for cookies, X25519 and the TAI64N timestamp.

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use ring::aead;

/// `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`.
pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's protocol identifier, mixed into the first hash.
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Label of the key under which MAC1 is computed.
pub const LABEL_MAC1: &[u8] = b"mac1----";
/// Label of the key under which cookies are encrypted.
pub const LABEL_COOKIE: &[u8] = b"cookie--";

/// An AEAD operation failed: the tag did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct AeadError;

/// BLAKE2s-256 of the concatenation of `parts`.
pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// Keyed BLAKE2s with a 16-byte output (WireGuard's `MAC`).
pub fn mac(key: &[u8; 32], data: &[u8]) -> [u8; 16] {
    mac_keyed(key, &[data])
}

/// Keyed BLAKE2s-128 over the concatenation of `parts`; `key` may be 16 or 32 bytes.
pub fn mac_keyed(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    type Mac128 = Blake2sMac<blake2::digest::consts::U16>;
    // Keys of 1..=32 bytes are valid for BLAKE2s; callers pass 16 or 32.
    let mut m = <Mac128 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| {
        <Mac128 as KeyInit>::new_from_slice(&[0u8; 32]).expect("32-byte key is valid")
    });
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

/// HMAC-BLAKE2s-256 (RFC 2104 with a 64-byte block).
pub fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for i in 0..32 {
        ipad[i] ^= key[i];
        opad[i] ^= key[i];
    }
    let mut inner = Blake2s256::new();
    Digest::update(&mut inner, ipad);
    for p in parts {
        Digest::update(&mut inner, p);
    }
    let inner: [u8; 32] = inner.finalize().into();
    hash(&[&opad, &inner])
}

/// HKDF with one output: `KDF1(key, input)`.
pub fn kdf1(key: &[u8; 32], input: &[u8]) -> [u8; 32] {
    let prk = hmac(key, &[input]);
    hmac(&prk, &[&[1]])
}

/// HKDF with two outputs: `KDF2(key, input)`.
pub fn kdf2(key: &[u8; 32], input: &[u8]) -> ([u8; 32], [u8; 32]) {
    let prk = hmac(key, &[input]);
    let t1 = hmac(&prk, &[&[1]]);
    let t2 = hmac(&prk, &[&t1, &[2]]);
    (t1, t2)
}

/// HKDF with three outputs: `KDF3(key, input)`.
pub fn kdf3(key: &[u8; 32], input: &[u8]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let prk = hmac(key, &[input]);
    let t1 = hmac(&prk, &[&[1]]);
    let t2 = hmac(&prk, &[&t1, &[2]]);
    let t3 = hmac(&prk, &[&t2, &[3]]);
    (t1, t2, t3)
}

fn nonce(counter: u64) -> aead::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    aead::Nonce::assume_unique_for_key(n)
}

/// A ChaCha20-Poly1305 key ready for use: ring's key schedule done once for single
/// messages, and the raw key for the group code of `portdistrict-aead`.
pub struct AeadKey {
    ring: aead::LessSafeKey,
    raw: zeroize::Zeroizing<[u8; 32]>,
}

impl AeadKey {
    /// Prepares `key` for sealing and opening.
    pub fn new(key: &[u8; 32]) -> Self {
        let unbound = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key)
            .expect("ChaCha20-Poly1305 takes 32-byte keys");
        Self {
            ring: aead::LessSafeKey::new(unbound),
            raw: zeroize::Zeroizing::new(*key),
        }
    }

    /// Seals a group of equal-length buffers (plaintext, then 16 bytes for the tag)
    /// with the AVX-512 group code; false, with nothing done, when it cannot take
    /// them (CPU, lengths, more than [`portdistrict_aead::GROUP`]).
    pub fn seal_group(&self, msgs: &mut [portdistrict_aead::Message<'_>]) -> bool {
        portdistrict_aead::seal_group(&self.raw, msgs)
    }

    /// Opens a group like [`AeadKey::seal_group`]; `ok[i]` says whether message `i`
    /// verified (and was decrypted).
    pub fn open_group(&self, msgs: &mut [portdistrict_aead::Message<'_>], ok: &mut [bool]) -> bool {
        portdistrict_aead::open_group(&self.raw, msgs, ok)
    }

    /// Encrypts `buf[..len-16]` in place and writes the tag into the last 16 bytes.
    /// `buf.len()` must be at least 16.
    pub fn seal(&self, counter: u64, aad: &[u8], buf: &mut [u8]) {
        let split = buf.len() - 16;
        let (data, tag_out) = buf.split_at_mut(split);
        let tag = self
            .ring
            .seal_in_place_separate_tag(nonce(counter), aead::Aad::from(aad), data)
            .expect("ChaCha20-Poly1305 seals any length WireGuard produces");
        tag_out.copy_from_slice(tag.as_ref());
    }

    /// Decrypts `buf` (ciphertext followed by the 16-byte tag) in place and returns
    /// the plaintext length.
    pub fn open(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> Result<usize, AeadError> {
        if buf.len() < 16 {
            return Err(AeadError);
        }
        self.ring
            .open_in_place(nonce(counter), aead::Aad::from(aad), buf)
            .map(|p| p.len())
            .map_err(|_| AeadError)
    }
}

/// One-shot AEAD: seals `plain` into `out` (`out.len() == plain.len() + 16`).
pub fn aead_seal(key: &[u8; 32], counter: u64, aad: &[u8], plain: &[u8], out: &mut [u8]) {
    out[..plain.len()].copy_from_slice(plain);
    AeadKey::new(key).seal(counter, aad, out);
}

/// One-shot AEAD: opens `sealed` (ciphertext + tag) into `out` (`sealed.len() - 16` bytes).
pub fn aead_open(
    key: &[u8; 32],
    counter: u64,
    aad: &[u8],
    sealed: &[u8],
    out: &mut [u8],
) -> Result<(), AeadError> {
    if sealed.len() < 16 || out.len() != sealed.len() - 16 {
        return Err(AeadError);
    }
    let mut tmp = [0u8; 64];
    let buf = tmp.get_mut(..sealed.len()).ok_or(AeadError)?;
    buf.copy_from_slice(sealed);
    let n = AeadKey::new(key).open(counter, aad, buf)?;
    out.copy_from_slice(&buf[..n]);
    Ok(())
}

/// XChaCha20-Poly1305 seal of a 16-byte cookie: 32 bytes out.
pub fn xaead_seal(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], plain: &[u8; 16]) -> [u8; 32] {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit as _};
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(key.into());
    let mut buf = *plain;
    let tag = cipher
        .encrypt_in_place_detached(nonce.into(), aad, &mut buf)
        .expect("XChaCha20-Poly1305 seals 16 bytes");
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&buf);
    out[16..].copy_from_slice(&tag);
    out
}

/// XChaCha20-Poly1305 open of a sealed cookie.
pub fn xaead_open(
    key: &[u8; 32],
    nonce: &[u8; 24],
    aad: &[u8],
    sealed: &[u8; 32],
) -> Result<[u8; 16], AeadError> {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit as _};
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(key.into());
    let mut buf: [u8; 16] = sealed[..16].try_into().map_err(|_| AeadError)?;
    let tag = chacha20poly1305::Tag::from_slice(&sealed[16..]);
    cipher
        .decrypt_in_place_detached(nonce.into(), aad, &mut buf, tag)
        .map_err(|_| AeadError)?;
    Ok(buf)
}

/// X25519. Returns `None` for a non-contributory (all-zero) result, which WireGuard
/// must reject (low-order points).
pub fn dh(private: &[u8; 32], public: &[u8; 32]) -> Option<[u8; 32]> {
    let s = x25519_dalek::StaticSecret::from(*private);
    let shared = s.diffie_hellman(&x25519_dalek::PublicKey::from(*public));
    if shared.was_contributory() {
        Some(shared.to_bytes())
    } else {
        None
    }
}

/// The public key of an X25519 private key.
pub fn dh_public(private: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*private)).to_bytes()
}

/// TAI64N label for a time given as seconds and nanoseconds since the Unix epoch,
/// with the low 24 bits of the nanoseconds cleared (wireguard-go's whitening, so the
/// timestamp does not leak a precise clock).
pub fn tai64n(unix_secs: u64, nanos: u32) -> [u8; 12] {
    const BASE: u64 = 0x4000_0000_0000_000a;
    const WHITENER_MASK: u32 = 0x0100_0000 - 1;
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&(BASE + unix_secs).to_be_bytes());
    out[8..].copy_from_slice(&(nanos & !WHITENER_MASK).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_hashes_match_wireguard() {
        // Well-known initial chaining key and hash of WireGuard (as in the kernel's
        // and wireguard-go's precomputed values).
        let ck = hash(&[CONSTRUCTION]);
        let h = hash(&[&ck, IDENTIFIER]);
        assert_eq!(
            hex::encode(ck),
            "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
        );
        assert_eq!(
            hex::encode(h),
            "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"
        );
    }

    #[test]
    fn hmac_blake2s_known_answer() {
        // HMAC-BLAKE2s-256 with a 32-byte zero key over "abc", cross-checked with
        // Python's hmac.new(bytes(32), b"abc", hashlib.blake2s).
        let out = hmac(&[0u8; 32], &[b"abc"]);
        assert_eq!(hex::encode(out), HMAC_ZERO_ABC);
    }
    const HMAC_ZERO_ABC: &str = include_str!("../testdata/hmac_blake2s_zero_abc.hex");

    #[test]
    fn aead_round_trip_and_tamper() {
        let k = [3u8; 32];
        let mut out = [0u8; 21];
        aead_seal(&k, 7, b"ad", b"hello", &mut out);
        let mut plain = [0u8; 5];
        aead_open(&k, 7, b"ad", &out, &mut plain).unwrap();
        assert_eq!(&plain, b"hello");
        out[0] ^= 1;
        assert_eq!(aead_open(&k, 7, b"ad", &out, &mut plain), Err(AeadError));
        let n = [9u8; 24];
        let mut s = xaead_seal(&k, &n, b"m", &[1u8; 16]);
        assert_eq!(xaead_open(&k, &n, b"m", &s).unwrap(), [1u8; 16]);
        s[31] ^= 1;
        assert!(xaead_open(&k, &n, b"m", &s).is_err());
    }

    #[test]
    fn dh_rejects_low_order_points() {
        assert_eq!(dh(&[5u8; 32], &[0u8; 32]), None);
        let a = [1u8; 32];
        let b = [2u8; 32];
        assert_eq!(dh(&a, &dh_public(&b)), dh(&b, &dh_public(&a)));
    }

    #[test]
    fn tai64n_is_monotonic_and_whitened() {
        let a = tai64n(1_700_000_000, 0x00ff_ffff);
        let b = tai64n(1_700_000_000, 0x0100_0000);
        assert_eq!(&a[8..], &[0, 0, 0, 0]);
        assert!(a < b);
        assert_eq!(
            &a[..8],
            &(0x4000_0000_0000_000au64 + 1_700_000_000).to_be_bytes()
        );
    }
}
