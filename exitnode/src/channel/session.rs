//! Transport messages after the handshake: ChaCha20-Poly1305 with the two keys of
//! Noise's `Split()`, named by direction. The first key encrypts what the initiator
//! (the consumer) sends: `consumer_to_provider`; the second, `provider_to_consumer`.
//! Nonces are Noise's: 32 zero bits, then a 64-bit little-endian counter per
//! direction, starting at 0; empty associated data. TCP keeps the order, so the
//! counter is implicit. A message that does not authenticate ends the session.

use super::frame::{encode, Frame, FrameError, FrameKind, MAX_BODY};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

/// Most plaintext bytes of one transport message.
pub const MAX_PLAINTEXT: usize = MAX_BODY - TAG_LEN;
const TAG_LEN: usize = 16;

/// Why a transport message could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A frame of another kind arrived.
    #[error("expected a transport message on the exit channel, got a {0:?} frame")]
    NotTransport(FrameKind),
    /// The message did not authenticate (tampered, or not from the session's peer).
    #[error("an exit channel message did not authenticate: the connection was tampered with")]
    Decrypt,
    /// The plaintext to send is too long for one frame.
    #[error("exit channel message of {0} bytes is longer than the {MAX_PLAINTEXT} allowed")]
    TooLong(usize),
    /// 2^64 messages one way: the session is used up.
    #[error("the exit channel session has used up its nonces")]
    Exhausted,
}

impl From<FrameError> for SessionError {
    fn from(e: FrameError) -> SessionError {
        match e {
            FrameError::BodyTooLong(n) => SessionError::TooLong(n.saturating_sub(TAG_LEN)),
            _ => SessionError::TooLong(MAX_PLAINTEXT + 1),
        }
    }
}

/// One direction: a key and its next nonce.
struct Direction {
    key: LessSafeKey,
    counter: u64,
}

impl std::fmt::Debug for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Direction {{ counter: {} }}", self.counter)
    }
}

impl Direction {
    fn new(key: &[u8; 32]) -> Direction {
        // A 32-byte key is what ChaCha20-Poly1305 takes: `new` cannot fail on it.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key)
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 takes 32-byte keys"));
        Direction {
            key: LessSafeKey::new(unbound),
            counter: 0,
        }
    }

    fn nonce(&self) -> Result<Nonce, SessionError> {
        if self.counter == u64::MAX {
            return Err(SessionError::Exhausted);
        }
        let mut n = [0; 12];
        n[4..].copy_from_slice(&self.counter.to_le_bytes());
        Ok(Nonce::assume_unique_for_key(n))
    }

    /// Appends a transport frame of `plaintext`, sealed, to `out`.
    fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SessionError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(SessionError::TooLong(plaintext.len()));
        }
        let nonce = self.nonce()?;
        let mut body = plaintext.to_vec();
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), &mut body)
            .map_err(|_| SessionError::TooLong(plaintext.len()))?;
        body.extend_from_slice(tag.as_ref());
        encode(FrameKind::Transport, &body, out)?;
        self.counter += 1;
        Ok(())
    }

    /// Appends the plaintext of a transport `frame` to `out`.
    fn open(&mut self, frame: Frame<'_>, out: &mut Vec<u8>) -> Result<(), SessionError> {
        if frame.kind != FrameKind::Transport {
            return Err(SessionError::NotTransport(frame.kind));
        }
        let nonce = self.nonce()?;
        let mut body = frame.body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut body)
            .map_err(|_| SessionError::Decrypt)?;
        out.extend_from_slice(plain);
        self.counter += 1;
        Ok(())
    }
}

/// The two keys of a finished handshake, by direction.
#[derive(Clone)]
pub(crate) struct Keys {
    pub(crate) consumer_to_provider: [u8; 32],
    pub(crate) provider_to_consumer: [u8; 32],
}

impl Keys {
    /// Noise `Split()`'s output: the first key is the initiator's (the consumer's)
    /// sending key, the second the responder's (the provider's).
    pub(crate) fn from_split((first, second): ([u8; 32], [u8; 32])) -> Keys {
        Keys {
            consumer_to_provider: first,
            provider_to_consumer: second,
        }
    }
}

/// The consumer's end of a channel.
#[derive(Debug)]
pub struct ConsumerSession {
    consumer_to_provider: Direction,
    provider_to_consumer: Direction,
}

/// The provider's end of a channel.
#[derive(Debug)]
pub struct ProviderSession {
    consumer_to_provider: Direction,
    provider_to_consumer: Direction,
}

impl ConsumerSession {
    pub(crate) fn new(keys: &Keys) -> ConsumerSession {
        ConsumerSession {
            consumer_to_provider: Direction::new(&keys.consumer_to_provider),
            provider_to_consumer: Direction::new(&keys.provider_to_consumer),
        }
    }

    /// Appends a transport frame carrying `plaintext` to the provider to `out`.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SessionError> {
        self.consumer_to_provider.seal(plaintext, out)
    }

    /// Appends the plaintext of the provider's transport `frame` to `out`.
    pub fn open(&mut self, frame: Frame<'_>, out: &mut Vec<u8>) -> Result<(), SessionError> {
        self.provider_to_consumer.open(frame, out)
    }
}

impl ProviderSession {
    pub(crate) fn new(keys: &Keys) -> ProviderSession {
        ProviderSession {
            consumer_to_provider: Direction::new(&keys.consumer_to_provider),
            provider_to_consumer: Direction::new(&keys.provider_to_consumer),
        }
    }

    /// Appends a transport frame carrying `plaintext` to the consumer to `out`.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SessionError> {
        self.provider_to_consumer.seal(plaintext, out)
    }

    /// Appends the plaintext of the consumer's transport `frame` to `out`.
    pub fn open(&mut self, frame: Frame<'_>, out: &mut Vec<u8>) -> Result<(), SessionError> {
        self.consumer_to_provider.open(frame, out)
    }
}
