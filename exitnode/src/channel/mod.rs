//! The exit control channel, sans-IO: Noise `IKpsk2_25519_ChaChaPoly_BLAKE2s` (the
//! `snow` crate) in frames over a byte stream (TCP) from a consumer to a provider. It
//! carries the exit request and the answer, and the provider's attestation. The
//! caller owns the socket and the clock: it feeds received bytes to a
//! [`FrameDecoder`], hands each [`Frame`] to the state machine, and writes the bytes
//! the state machine appended to its output buffer.
//!
//! In order:
//! 1. The consumer ([`Initiator::start`]) knows the provider's Noise static public key
//!    and the invite token (both from the invite) and has its own Noise static key
//!    (never its WireGuard key: [`NoiseSecretKey`] is its own type). It sends message
//!    1, whose payload is a [`Hello`]: a timestamp and its exit request.
//! 2. The provider ([`Responder::read_hello`]) decrypts it, learns the consumer's
//!    static key, asks its [`Consumers`] for the token of the invite named by the
//!    hello's token id, refuses a hello not newer than the last one it accepted from
//!    that key ([`ReplayWindow`]), and returns a [`Pending`] handshake with the hello.
//!    Anything it cannot answer in Noise gets a plaintext refusal frame
//!    ([`RefusalCode`]).
//! 3. The provider decides (its store, the proof of WireGuard key ownership) and
//!    answers ([`Pending::answer`]): message 2's payload is a [`Reply`], the
//!    [`Answer`] and the [`Attestation`] if it has one. PSK = BLAKE3
//!    `derive_key("portdistrict 2026-12 exit channel psk", token)`, mixed in at the
//!    end of message 2 (`psk2`): only a consumer holding the token reads the reply.
//! 4. The consumer reads it ([`Initiator::read_reply`]) and both sides hold a
//!    session ([`ConsumerSession`], [`ProviderSession`]) for transport messages,
//!    whose two cipher states are named by direction, `consumer_to_provider` and
//!    `provider_to_consumer` (the predecessor indexed them and shipped them swapped).
//!
//! A refusal frame is **unauthenticated**: anyone on the path can forge one. It only
//! turns "the connection ended" into a reason a user can act on; an on-path attacker
//! gains nothing from it but what it can do anyway (deny service, by cutting the
//! connection). Nothing the consumer trusts is ever taken from a refusal.
//!
//! With `psk2` the provider can decrypt message 1 without the PSK: a wrong PSK shows
//! at the consumer, as message 2 failing to authenticate ([`InitiatorError::Reply`]),
//! and at the provider only as the consumer never sending a transport message.
//!
//! Before message 1, the consumer's [`Dialer`] decides which address to dial and
//! when: each endpoint's IP at the channel port in turn, each with a share of the
//! time budget, again after [`RETRY`] when busy or failed (see [`dialer`]).

pub mod dialer;
mod frame;
mod handshake;
mod payload;
mod replay;
mod session;
#[cfg(test)]
pub(crate) mod tests;

pub use dialer::{DialAction, DialError, Dialer, Outcome, RETRY};
pub use frame::{encode, Frame, FrameDecoder, FrameError, FrameKind, MAX_BODY, MAX_FRAME};
pub use handshake::{
    Consumers, Initiator, InitiatorError, Pending, ProviderRef, RefusalCode, Request, Responder,
    ResponderError,
};
pub use payload::{
    Answer, Attestation, Hello, PayloadError, Reply, Timestamp, HELLO_LEN, MAX_CHAIN, MAX_REPORT,
    MAX_VCEK,
};
pub use replay::ReplayWindow;
pub use session::{ConsumerSession, ProviderSession, SessionError, MAX_PLAINTEXT};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// The Noise prologue: both sides must agree on it, so it names the protocol version.
pub const PROLOGUE: &[u8] = b"portdistrict exit channel 1";
/// The BLAKE3 key-derivation context of the PSK.
pub const PSK_CONTEXT: &str = "portdistrict 2026-12 exit channel psk";
/// The BLAKE3 key-derivation context of the token id.
pub const TOKEN_ID_CONTEXT: &str = "portdistrict 2026-12 exit channel token id";

/// A Noise static private key (X25519): the channel's identity, never a WireGuard key.
#[derive(Clone, PartialEq, Eq)]
pub struct NoiseSecretKey([u8; 32]);

/// A Noise static public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NoisePublicKey(pub [u8; 32]);

impl NoiseSecretKey {
    /// The key of these bytes (clamped by X25519 when used).
    pub fn from_bytes(bytes: [u8; 32]) -> NoiseSecretKey {
        NoiseSecretKey(bytes)
    }

    /// Its bytes, to store it.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// Its public key.
    pub fn public(&self) -> NoisePublicKey {
        NoisePublicKey(x25519_dalek::x25519(
            self.0,
            x25519_dalek::X25519_BASEPOINT_BYTES,
        ))
    }
}

impl std::fmt::Debug for NoiseSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NoiseSecretKey(public {:02x?})", &self.public().0[..4])
    }
}

/// The pre-shared key of a channel, derived from an invite token.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk([u8; 32]);

impl Psk {
    /// The PSK of `token`.
    pub fn of(token: &[u8; 16]) -> Psk {
        Psk(blake3::derive_key(PSK_CONTEXT, token))
    }
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(..)")
    }
}

/// Names an invite in message 1 without revealing its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenId(pub [u8; 16]);

impl TokenId {
    /// The id of `token`: the first 16 bytes of BLAKE3 `derive_key(TOKEN_ID_CONTEXT, token)`.
    pub fn of(token: &[u8; 16]) -> TokenId {
        let k = blake3::derive_key(TOKEN_ID_CONTEXT, token);
        let mut id = [0; 16];
        id.copy_from_slice(&k[..16]);
        TokenId(id)
    }
}
