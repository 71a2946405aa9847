//! The envelope that encrypts a signed record to its readers: a random content key,
//! one key slot per reader (an ephemeral X25519 key and the content key wrapped under
//! a key derived from the shared secret), then the record under the content key with
//! the owner name as associated data.
//!
//! ```text
//! version u8 (1) | readers u16 (<= 4096) | readers x (ephemeral key [32]
//! | wrapped content key [48]) | nonce [12] | ChaCha20-Poly1305(signed record)
//! ```

use super::{RecordError, ENVELOPE_VERSION, MAX_READERS};
use crate::codec::{Reader, Writer};
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

const SLOT_CONTEXT: &str = "portdistrict 2026-11 record key slot";

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
    let mut out = Writer::new();
    out.u8(ENVELOPE_VERSION)
        .u16(u16::try_from(readers.len()).expect("<= 4096"));
    for r in readers {
        let eph = x25519_dalek::StaticSecret::random_from_rng(&mut *rng);
        let eph_pub = x25519_dalek::PublicKey::from(&eph).to_bytes();
        let shared = eph.diffie_hellman(&x25519_dalek::PublicKey::from(*r));
        let kek = slot_key(shared.as_bytes(), &eph_pub, r);
        let wrapped = chacha20poly1305::ChaCha20Poly1305::new((&*kek).into())
            .encrypt(&[0u8; 12].into(), &content_key[..])
            .map_err(|_| RecordError::Malformed("sealing failed"))?;
        out.bytes(&eph_pub).bytes(&wrapped);
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
    out.bytes(&nonce).bytes(&body);
    Ok(out.into_bytes())
}

/// Opens an envelope found at `owner` with our X25519 secret.
pub fn open(
    envelope: &[u8],
    owner: &str,
    ours: &x25519_dalek::StaticSecret,
) -> Result<Vec<u8>, RecordError> {
    let mut r = Reader::new(envelope);
    let v = r.u8("version")?;
    if v != ENVELOPE_VERSION {
        return Err(RecordError::Version(v));
    }
    let n = usize::from(r.u16("reader count")?);
    if n > MAX_READERS {
        return Err(RecordError::TooMany("readers"));
    }
    let our_pub = x25519_dalek::PublicKey::from(ours).to_bytes();
    let mut content_key = None;
    for _ in 0..n {
        let eph: [u8; 32] = r.array("ephemeral key")?;
        let wrapped = r.bytes(48, "key slot")?;
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
    let nonce: [u8; 12] = r.array("nonce")?;
    let key = content_key.ok_or(RecordError::NotForUs)?;
    let key: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| RecordError::Altered)?;
    chacha20poly1305::ChaCha20Poly1305::new((&key).into())
        .decrypt(
            (&nonce).into(),
            Payload {
                msg: r.rest(),
                aad: owner.as_bytes(),
            },
        )
        .map_err(|_| RecordError::Altered)
}
