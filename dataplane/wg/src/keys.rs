//! Key types shared by every layer: 32-byte Curve25519 keys and preshared keys,
//! with the hex (UAPI) and base64 (wg(8) / config files) encodings.

use std::fmt;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Error decoding a key from text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    /// The text is not 64 hexadecimal digits.
    #[error("key must be 64 hexadecimal digits")]
    BadHex,
    /// The text is not 44 characters of standard base64 encoding 32 bytes.
    #[error("key must be 44 characters of base64 encoding 32 bytes")]
    BadBase64,
}

fn parse_hex32(s: &str) -> Result<[u8; 32], KeyParseError> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return Err(KeyParseError::BadHex);
    }
    hex::decode_to_slice(s, &mut out).map_err(|_| KeyParseError::BadHex)?;
    Ok(out)
}

fn parse_b64_32(s: &str) -> Result<[u8; 32], KeyParseError> {
    use base64::Engine as _;
    let v = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| KeyParseError::BadBase64)?;
    v.try_into().map_err(|_| KeyParseError::BadBase64)
}

fn b64(bytes: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A Curve25519 public key (a peer's static identity on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses 64 hex digits (the UAPI encoding).
    pub fn from_hex(s: &str) -> Result<Self, KeyParseError> {
        parse_hex32(s).map(Self)
    }
    /// Parses standard base64 (the wg(8) encoding).
    pub fn from_base64(s: &str) -> Result<Self, KeyParseError> {
        parse_b64_32(s).map(Self)
    }
    /// Lower-case hex, as the UAPI prints it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Standard base64, as wg(8) prints it.
    pub fn to_base64(&self) -> String {
        b64(&self.0)
    }
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A Curve25519 private key. Zeroed on drop; never printed by `Debug`.
#[derive(Clone)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// Wraps raw bytes. Clamping happens inside X25519, as in every WireGuard.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
    /// Parses 64 hex digits (the UAPI encoding).
    pub fn from_hex(s: &str) -> Result<Self, KeyParseError> {
        parse_hex32(s).map(Self)
    }
    /// Parses standard base64 (the wg(8) encoding).
    pub fn from_base64(s: &str) -> Result<Self, KeyParseError> {
        parse_b64_32(s).map(Self)
    }
    /// Generates a fresh key from a cryptographic RNG.
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        Self(b)
    }
    /// True for the all-zero key, which the UAPI uses to mean "no key".
    pub fn is_zero(&self) -> bool {
        self.0.ct_eq(&[0u8; 32]).into()
    }
    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let s = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&s).to_bytes())
    }
    /// Lower-case hex, as the UAPI prints it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Standard base64, as wg(8) prints it.
    pub fn to_base64(&self) -> String {
        b64(&self.0)
    }
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for PrivateKey {}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A 32-byte preshared key mixed into the handshake (all zero = none).
#[derive(Clone, Default)]
pub struct PresharedKey(pub [u8; 32]);

impl PresharedKey {
    /// Parses 64 hex digits (the UAPI encoding).
    pub fn from_hex(s: &str) -> Result<Self, KeyParseError> {
        parse_hex32(s).map(Self)
    }
    /// Lower-case hex, as the UAPI prints it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// True when no preshared key is set.
    pub fn is_zero(&self) -> bool {
        self.0.ct_eq(&[0u8; 32]).into()
    }
}

impl PartialEq for PresharedKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for PresharedKey {}

impl Drop for PresharedKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7748_public_key() {
        // RFC 7748 §6.1 Alice.
        let sk = PrivateKey::from_hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        )
        .unwrap();
        assert_eq!(
            sk.public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn encodings_round_trip_and_reject() {
        let k = PublicKey([7u8; 32]);
        assert_eq!(PublicKey::from_hex(&k.to_hex()).unwrap(), k);
        assert_eq!(PublicKey::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(PublicKey::from_hex("abc"), Err(KeyParseError::BadHex));
        assert_eq!(
            PublicKey::from_hex(&"zz".repeat(32)),
            Err(KeyParseError::BadHex)
        );
        assert_eq!(
            PublicKey::from_base64("AAAA"),
            Err(KeyParseError::BadBase64)
        );
    }
}
