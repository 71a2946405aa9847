//! Noise_IKpsk2 message construction and consumption (WireGuard paper §5.4).
//!
//! Pure functions over byte arrays: the initiator writes an initiation and keeps an
//! [`InitiatorState`]; the responder consumes it into a [`ConsumedInitiation`],
//! writes a response and derives [`SessionKeys`]; the initiator consumes the response
//! and derives the same keys. MAC1/MAC2 are added and checked by [`crate::cookie`];
//! timestamps, indices and ephemeral keys come from the caller, so every function is
//! deterministic and testable.

use crate::crypto::{self, aead_open, aead_seal, dh, dh_public, hash, kdf1, kdf2, kdf3};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::wire::{self, Initiation, Response};
use zeroize::Zeroize;

/// Why a handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// An AEAD field did not authenticate: wrong key, or a forged/corrupted message.
    #[error("handshake message failed to decrypt")]
    Decrypt,
    /// A Diffie-Hellman result was all zero (low-order point).
    #[error("handshake used a low-order public key")]
    LowOrderPoint,
    /// The static key in an initiation belongs to no configured peer.
    #[error("initiation from an unknown public key")]
    UnknownPeer,
    /// This device has no private key configured.
    #[error("no private key configured")]
    NoPrivateKey,
}

/// `HASH(CONSTRUCTION)`: the initial chaining key.
fn initial_chaining_key() -> [u8; 32] {
    hash(&[crypto::CONSTRUCTION])
}

/// `HASH(HASH(CONSTRUCTION) || IDENTIFIER)`: the initial hash.
fn initial_hash() -> [u8; 32] {
    hash(&[&initial_chaining_key(), crypto::IDENTIFIER])
}

/// This device's static identity with the values derived from it once.
pub struct StaticIdentity {
    private: PrivateKey,
    public: PublicKey,
    /// `HASH(LABEL_MAC1 || public)`: key that peers use for MAC1 to us.
    pub mac1_key: [u8; 32],
    /// `HASH(LABEL_COOKIE || public)`: key under which we encrypt cookie replies.
    pub cookie_key: [u8; 32],
    /// `HASH(HASH(HASH(CONSTRUCTION) || IDENTIFIER) || public)`: responder's first hash.
    responder_hash: [u8; 32],
}

impl StaticIdentity {
    /// Derives everything needed to answer handshakes from `private`.
    pub fn new(private: PrivateKey) -> Self {
        let public = private.public_key();
        Self {
            mac1_key: hash(&[crypto::LABEL_MAC1, public.as_bytes()]),
            cookie_key: hash(&[crypto::LABEL_COOKIE, public.as_bytes()]),
            responder_hash: hash(&[&initial_hash(), public.as_bytes()]),
            private,
            public,
        }
    }
    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
    /// The private key.
    pub fn private_key(&self) -> &PrivateKey {
        &self.private
    }
    /// `DH(our static, their static)`, computed once per peer.
    pub fn static_static(&self, remote: &PublicKey) -> Option<[u8; 32]> {
        dh(self.private.as_bytes(), remote.as_bytes())
    }
}

/// What the initiator keeps between sending an initiation and receiving the response.
pub struct InitiatorState {
    /// Our sender index in the initiation.
    pub local_index: u32,
    ephemeral_private: [u8; 32],
    chaining_key: [u8; 32],
    hash: [u8; 32],
}

impl Drop for InitiatorState {
    fn drop(&mut self) {
        self.ephemeral_private.zeroize();
        self.chaining_key.zeroize();
    }
}

/// Transport keys derived by a completed handshake.
pub struct SessionKeys {
    /// Key for messages we send.
    pub send: [u8; 32],
    /// Key for messages we receive.
    pub recv: [u8; 32],
    /// Our index (peers put it in the receiver field of what they send us).
    pub local_index: u32,
    /// The peer's index (we put it in the receiver field of what we send).
    pub remote_index: u32,
    /// True when we initiated this handshake (only the initiator rekeys on age).
    pub is_initiator: bool,
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.send.zeroize();
        self.recv.zeroize();
    }
}

/// Writes a handshake initiation (all fields except MAC1/MAC2) into `msg` and
/// returns the state needed to consume the response.
///
/// `static_static` is `DH(our static, peer static)`; `ephemeral` fresh random bytes;
/// `timestamp` a TAI64N label greater than every earlier one sent to this peer.
pub fn create_initiation(
    local: &StaticIdentity,
    remote: &PublicKey,
    static_static: &[u8; 32],
    local_index: u32,
    ephemeral: [u8; 32],
    timestamp: [u8; 12],
    msg: &mut Initiation<&mut [u8]>,
) -> Result<InitiatorState, HandshakeError> {
    let mut ck = initial_chaining_key();
    let mut h = hash(&[&initial_hash(), remote.as_bytes()]);
    let e_pub = dh_public(&ephemeral);
    msg.fill_header();
    msg.set_sender(local_index);
    *msg.ephemeral_mut() = e_pub;
    ck = kdf1(&ck, &e_pub);
    h = hash(&[&h, &e_pub]);
    let es = dh(&ephemeral, remote.as_bytes()).ok_or(HandshakeError::LowOrderPoint)?;
    let (ck2, k) = kdf2(&ck, &es);
    ck = ck2;
    aead_seal(
        &k,
        0,
        &h,
        local.public.as_bytes(),
        msg.encrypted_static_mut(),
    );
    h = hash(&[&h, msg.encrypted_static()]);
    let (ck3, k) = kdf2(&ck, static_static);
    ck = ck3;
    aead_seal(&k, 0, &h, &timestamp, msg.encrypted_timestamp_mut());
    h = hash(&[&h, msg.encrypted_timestamp()]);
    Ok(InitiatorState {
        local_index,
        ephemeral_private: ephemeral,
        chaining_key: ck,
        hash: h,
    })
}

/// The responder's view of a decrypted initiation.
pub struct ConsumedInitiation {
    /// The initiator's static public key (identifies the peer).
    pub remote_static: PublicKey,
    /// The initiator's TAI64N timestamp (must exceed the last one seen from this peer).
    pub timestamp: [u8; 12],
    /// The initiator's sender index.
    pub remote_index: u32,
    remote_ephemeral: [u8; 32],
    chaining_key: [u8; 32],
    hash: [u8; 32],
}

impl Drop for ConsumedInitiation {
    fn drop(&mut self) {
        self.chaining_key.zeroize();
    }
}

/// Decrypts an initiation addressed to `local`. `static_static_of` returns the
/// precomputed `DH(our static, their static)` of a configured peer, or `None` when the
/// key belongs to no peer.
pub fn consume_initiation(
    local: &StaticIdentity,
    msg: &Initiation<&[u8]>,
    static_static_of: impl FnOnce(&PublicKey) -> Option<[u8; 32]>,
) -> Result<ConsumedInitiation, HandshakeError> {
    let mut ck = initial_chaining_key();
    let mut h = local.responder_hash;
    let e_pub = *msg.ephemeral();
    ck = kdf1(&ck, &e_pub);
    h = hash(&[&h, &e_pub]);
    let es = dh(local.private.as_bytes(), &e_pub).ok_or(HandshakeError::LowOrderPoint)?;
    let (ck2, k) = kdf2(&ck, &es);
    ck = ck2;
    let mut remote = [0u8; 32];
    aead_open(&k, 0, &h, msg.encrypted_static(), &mut remote)
        .map_err(|_| HandshakeError::Decrypt)?;
    let remote = PublicKey(remote);
    h = hash(&[&h, msg.encrypted_static()]);
    let ss = static_static_of(&remote).ok_or(HandshakeError::UnknownPeer)?;
    let (ck3, k) = kdf2(&ck, &ss);
    ck = ck3;
    let mut timestamp = [0u8; 12];
    aead_open(&k, 0, &h, msg.encrypted_timestamp(), &mut timestamp)
        .map_err(|_| HandshakeError::Decrypt)?;
    h = hash(&[&h, msg.encrypted_timestamp()]);
    Ok(ConsumedInitiation {
        remote_static: remote,
        timestamp,
        remote_index: msg.sender(),
        remote_ephemeral: e_pub,
        chaining_key: ck,
        hash: h,
    })
}

/// Writes the response to a consumed initiation (all fields except MAC1/MAC2) and
/// derives the responder's session keys.
pub fn create_response(
    init: &ConsumedInitiation,
    psk: &PresharedKey,
    local_index: u32,
    ephemeral: [u8; 32],
    msg: &mut Response<&mut [u8]>,
) -> Result<SessionKeys, HandshakeError> {
    let mut ck = init.chaining_key;
    let mut h = init.hash;
    let e_pub = dh_public(&ephemeral);
    msg.fill_header();
    msg.set_sender(local_index);
    msg.set_receiver(init.remote_index);
    *msg.ephemeral_mut() = e_pub;
    ck = kdf1(&ck, &e_pub);
    h = hash(&[&h, &e_pub]);
    let ee = dh(&ephemeral, &init.remote_ephemeral).ok_or(HandshakeError::LowOrderPoint)?;
    ck = kdf1(&ck, &ee);
    let se = dh(&ephemeral, init.remote_static.as_bytes()).ok_or(HandshakeError::LowOrderPoint)?;
    ck = kdf1(&ck, &se);
    let (ck2, t, k) = kdf3(&ck, &psk.0);
    ck = ck2;
    h = hash(&[&h, &t]);
    aead_seal(&k, 0, &h, &[], msg.encrypted_nothing_mut());
    let (recv, send) = kdf2(&ck, &[]);
    Ok(SessionKeys {
        send,
        recv,
        local_index,
        remote_index: init.remote_index,
        is_initiator: false,
    })
}

/// Consumes the response to our initiation and derives the initiator's session keys.
pub fn consume_response(
    local: &StaticIdentity,
    psk: &PresharedKey,
    state: &InitiatorState,
    msg: &Response<&[u8]>,
) -> Result<SessionKeys, HandshakeError> {
    let mut ck = state.chaining_key;
    let mut h = state.hash;
    let e_pub = *msg.ephemeral();
    ck = kdf1(&ck, &e_pub);
    h = hash(&[&h, &e_pub]);
    let ee = dh(&state.ephemeral_private, &e_pub).ok_or(HandshakeError::LowOrderPoint)?;
    ck = kdf1(&ck, &ee);
    let se = dh(local.private.as_bytes(), &e_pub).ok_or(HandshakeError::LowOrderPoint)?;
    ck = kdf1(&ck, &se);
    let (ck2, t, k) = kdf3(&ck, &psk.0);
    ck = ck2;
    h = hash(&[&h, &t]);
    let mut empty = [0u8; 0];
    aead_open(&k, 0, &h, msg.encrypted_nothing(), &mut empty)
        .map_err(|_| HandshakeError::Decrypt)?;
    let (send, recv) = kdf2(&ck, &[]);
    Ok(SessionKeys {
        send,
        recv,
        local_index: state.local_index,
        remote_index: msg.sender(),
        is_initiator: true,
    })
}

/// Size of a serialized initiation, re-exported for buffer sizing.
pub const INITIATION_LEN: usize = wire::INITIATION_LEN;
/// Size of a serialized response, re-exported for buffer sizing.
pub const RESPONSE_LEN: usize = wire::RESPONSE_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(b: u8) -> StaticIdentity {
        StaticIdentity::new(PrivateKey::from_bytes([b; 32]))
    }

    fn full_handshake(
        psk_i: [u8; 32],
        psk_r: [u8; 32],
    ) -> Result<(SessionKeys, SessionKeys), HandshakeError> {
        let (i, r) = (ident(1), ident(2));
        let ss_i = i.static_static(r.public_key()).unwrap();
        let mut buf = [0u8; wire::INITIATION_LEN];
        let st = create_initiation(
            &i,
            r.public_key(),
            &ss_i,
            0x1111,
            [7u8; 32],
            crypto::tai64n(1, 0),
            &mut Initiation::new_unchecked(&mut buf[..]),
        )?;
        let msg = Initiation::new_checked(&buf[..]).unwrap();
        let ipub = *i.public_key();
        let got = consume_initiation(&r, &msg, |k| {
            (k == &ipub).then(|| r.static_static(k).unwrap())
        })?;
        assert_eq!(got.remote_static, ipub);
        assert_eq!(got.timestamp, crypto::tai64n(1, 0));
        assert_eq!(got.remote_index, 0x1111);
        let mut rbuf = [0u8; wire::RESPONSE_LEN];
        let rk = create_response(
            &got,
            &PresharedKey(psk_r),
            0x2222,
            [9u8; 32],
            &mut Response::new_unchecked(&mut rbuf[..]),
        )?;
        let rmsg = Response::new_checked(&rbuf[..]).unwrap();
        let ik = consume_response(&i, &PresharedKey(psk_i), &st, &rmsg)?;
        Ok((ik, rk))
    }

    #[test]
    fn handshake_derives_matching_keys_with_and_without_psk() {
        for psk in [[0u8; 32], [5u8; 32]] {
            let (ik, rk) = full_handshake(psk, psk).unwrap();
            assert_eq!(ik.send, rk.recv);
            assert_eq!(ik.recv, rk.send);
            assert_ne!(ik.send, ik.recv);
            assert_eq!((ik.local_index, ik.remote_index), (0x1111, 0x2222));
            assert_eq!((rk.local_index, rk.remote_index), (0x2222, 0x1111));
            assert!(ik.is_initiator && !rk.is_initiator);
        }
    }

    #[test]
    fn mismatched_psk_fails() {
        assert_eq!(
            full_handshake([1u8; 32], [2u8; 32]).err(),
            Some(HandshakeError::Decrypt)
        );
    }

    #[test]
    fn unknown_peer_and_wrong_responder_fail() {
        let (i, r, other) = (ident(1), ident(2), ident(3));
        let mut buf = [0u8; wire::INITIATION_LEN];
        let ss = i.static_static(r.public_key()).unwrap();
        create_initiation(
            &i,
            r.public_key(),
            &ss,
            1,
            [7u8; 32],
            [0; 12],
            &mut Initiation::new_unchecked(&mut buf[..]),
        )
        .unwrap();
        let msg = Initiation::new_checked(&buf[..]).unwrap();
        assert_eq!(
            consume_initiation(&r, &msg, |_| None).err(),
            Some(HandshakeError::UnknownPeer)
        );
        assert_eq!(
            consume_initiation(&other, &msg, |k| other.static_static(k)).err(),
            Some(HandshakeError::Decrypt)
        );
    }
}
