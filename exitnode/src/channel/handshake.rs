//! The two handshake state machines. The consumer: [`Initiator::start`] (message 1
//! out), [`Initiator::read_reply`] (message 2 or a refusal in). The provider:
//! [`Responder::read_hello`] (message 1 in, a [`Pending`] or a refusal), then
//! [`Pending::answer`] (message 2 out). Each state is consumed by its transition.

use super::frame::{encode, Frame, FrameKind, MAX_BODY};
use super::payload::{Hello, PayloadError, Reply, Timestamp};
use super::replay::ReplayWindow;
use super::session::{ConsumerSession, Keys, ProviderSession};
use super::{NoisePublicKey, NoiseSecretKey, Psk, TokenId, NOISE_PARAMS, PROLOGUE};
use snow::{Builder, HandshakeState};
use std::time::Duration;

/// Why the provider would not answer message 1 in Noise, on the wire as a refusal
/// frame's reason byte. Unauthenticated: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefusalCode {
    /// Message 1 did not decrypt: made for another server key (or mangled).
    #[error("the provider could not decrypt the request: the invite names another server key (is it this provider's current invite?)")]
    WrongServerKey,
    /// The provider knows no such consumer and invite.
    #[error("the provider does not know this consumer or invite")]
    UnknownConsumer,
    /// Message 1 is not newer than one the provider already accepted from this key.
    #[error("the provider saw this request already (a replay, or the clock went back)")]
    Replayed,
    /// Message 1 decrypted but its payload is not a hello, or a frame other than
    /// message 1 came first.
    #[error("the provider could not read the request: upgrade portdistrict")]
    Malformed,
    /// The provider has too many connections, or this source connected too often: it
    /// did not read message 1. Try again in a moment.
    #[error("the provider is busy (too many exit channel connections); try again in a moment")]
    Busy,
}

impl RefusalCode {
    /// Every code.
    pub const ALL: [RefusalCode; 5] = [
        RefusalCode::WrongServerKey,
        RefusalCode::UnknownConsumer,
        RefusalCode::Replayed,
        RefusalCode::Malformed,
        RefusalCode::Busy,
    ];

    /// Its byte.
    pub fn code(self) -> u8 {
        match self {
            RefusalCode::WrongServerKey => 1,
            RefusalCode::UnknownConsumer => 2,
            RefusalCode::Replayed => 3,
            RefusalCode::Malformed => 4,
            RefusalCode::Busy => 5,
        }
    }

    /// The refusal of a byte.
    pub fn from_code(code: u8) -> Option<RefusalCode> {
        RefusalCode::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Appends its refusal frame to `out`.
    pub fn encode(self, out: &mut Vec<u8>) {
        // One body byte is always within the frame bound.
        let _ = encode(FrameKind::Refusal, &[self.code()], out);
    }
}

/// Why the consumer's handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InitiatorError {
    /// The provider refused (unauthenticated; see the module docs).
    #[error("{0}")]
    Refused(RefusalCode),
    /// A refusal frame with a reason this version does not know, or not one byte.
    #[error("the provider refused with unknown reason {0}: is it a newer portdistrict?")]
    UnknownRefusal(u8),
    /// A frame other than message 2 or a refusal.
    #[error("expected the provider's handshake reply, got a {0:?} frame")]
    Unexpected(FrameKind),
    /// Message 2 did not authenticate: the invite's token (the PSK) is not the one the
    /// provider holds for it, or the message was altered.
    #[error("the provider's reply did not authenticate: wrong invite token, or the connection was tampered with")]
    Reply,
    /// Message 2 authenticated but its payload is not a reply.
    #[error("the provider's reply is unreadable: {0}")]
    Payload(PayloadError),
    /// Noise could not be set up or run (a bug, or an unusable key).
    #[error("the exit channel's Noise handshake failed: {0}")]
    Noise(&'static str),
}

/// Why the provider did not answer in Noise, and what to send instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponderError {
    /// A frame other than message 1 came first.
    #[error("expected handshake message 1, got a {0:?} frame")]
    Unexpected(FrameKind),
    /// Message 1 did not decrypt with our static key.
    #[error("message 1 did not decrypt: the consumer's invite names another server key, or the message was altered")]
    Undecryptable,
    /// Message 1's payload is not a hello.
    #[error("message 1 is unreadable: {0}")]
    Hello(PayloadError),
    /// The consumer's static key and token id are not known.
    #[error("unknown consumer or invite")]
    UnknownConsumer,
    /// The hello is not newer than the last one accepted from its key.
    #[error("replayed message 1 (not newer than the last accepted one)")]
    Replayed,
    /// The reply could not be written (a field beyond its bound).
    #[error("the reply cannot be sent: {0}")]
    Answer(PayloadError),
    /// Noise could not be set up or run (a bug, or an unusable key).
    #[error("the exit channel's Noise handshake failed: {0}")]
    Noise(&'static str),
}

impl ResponderError {
    /// The refusal to send the consumer, if one is sent (not for [`Self::Answer`] and
    /// [`Self::Noise`], our own failures: the caller closes the connection).
    pub fn refusal(&self) -> Option<RefusalCode> {
        match self {
            ResponderError::Undecryptable => Some(RefusalCode::WrongServerKey),
            ResponderError::UnknownConsumer => Some(RefusalCode::UnknownConsumer),
            ResponderError::Replayed => Some(RefusalCode::Replayed),
            ResponderError::Unexpected(_) | ResponderError::Hello(_) => {
                Some(RefusalCode::Malformed)
            }
            ResponderError::Answer(_) | ResponderError::Noise(_) => None,
        }
    }
}

/// The exit request message 1 carries (see [`crate::negotiate::request`] for the proof).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The consumer's WireGuard public key.
    pub wg_key: [u8; 32],
    /// Its proof of ownership.
    pub proof: [u8; 32],
}

/// What the consumer knows of the provider, from the invite.
#[derive(Debug, Clone)]
pub struct ProviderRef {
    /// The provider's Noise static public key.
    pub key: NoisePublicKey,
    /// The invite's token.
    pub token: [u8; 16],
}

/// The consumer after sending message 1.
pub struct Initiator {
    hs: HandshakeState,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Initiator { awaiting message 2 }")
    }
}

impl Initiator {
    /// Appends message 1 to `out`: `own` is the consumer's Noise static key, `now`
    /// the time since the Unix epoch (it must grow between handshakes to the same
    /// provider, or the provider refuses the later one as a replay).
    pub fn start(
        own: &NoiseSecretKey,
        provider: &ProviderRef,
        request: Request,
        now: Duration,
        out: &mut Vec<u8>,
    ) -> Result<Initiator, InitiatorError> {
        Initiator::start_with(own, provider, request, now, None, out)
    }

    /// [`Initiator::start`] with a chosen ephemeral key (golden vectors only).
    pub(crate) fn start_with(
        own: &NoiseSecretKey,
        provider: &ProviderRef,
        request: Request,
        now: Duration,
        ephemeral: Option<&[u8; 32]>,
        out: &mut Vec<u8>,
    ) -> Result<Initiator, InitiatorError> {
        let own = own.to_bytes();
        let psk = Psk::of(&provider.token);
        let mut b = builder()
            .and_then(|b| b.local_private_key(&own))
            .and_then(|b| b.remote_public_key(&provider.key.0))
            .and_then(|b| b.psk(2, &psk.0))
            .map_err(noise)?;
        if let Some(e) = ephemeral {
            b = b.fixed_ephemeral_key_for_testing_only(e);
        }
        let mut hs = b.build_initiator().map_err(noise)?;
        let hello = Hello {
            timestamp: Timestamp::from(now),
            token_id: TokenId::of(&provider.token),
            wg_key: request.wg_key,
            proof: request.proof,
        };
        let mut msg = vec![0; MAX_BODY];
        let n = hs.write_message(&hello.emit(), &mut msg).map_err(noise)?;
        encode(FrameKind::Handshake1, &msg[..n], out)
            .map_err(|_| InitiatorError::Noise("message 1 too long"))?;
        Ok(Initiator { hs })
    }

    /// Reads the provider's answer: message 2, or a refusal.
    pub fn read_reply(
        mut self,
        frame: Frame<'_>,
    ) -> Result<(Reply, ConsumerSession), InitiatorError> {
        match frame.kind {
            FrameKind::Handshake2 => {}
            FrameKind::Refusal => return Err(refusal(frame.body)),
            k => return Err(InitiatorError::Unexpected(k)),
        }
        let mut payload = vec![0; MAX_BODY];
        let n = self
            .hs
            .read_message(frame.body, &mut payload)
            .map_err(|_| InitiatorError::Reply)?;
        let reply = Reply::parse(&payload[..n]).map_err(InitiatorError::Payload)?;
        let keys = split(&mut self.hs).ok_or(InitiatorError::Noise("handshake unfinished"))?;
        Ok((reply, ConsumerSession::new(&keys)))
    }
}

/// The refusal in a refusal frame's body.
fn refusal(body: &[u8]) -> InitiatorError {
    match body {
        [code] => RefusalCode::from_code(*code).map_or(
            InitiatorError::UnknownRefusal(*code),
            InitiatorError::Refused,
        ),
        [code, ..] => InitiatorError::UnknownRefusal(*code),
        [] => InitiatorError::UnknownRefusal(0),
    }
}

/// Who may connect: the provider's invites and consumers.
pub trait Consumers {
    /// The token of the invite named `token_id`, if `consumer` may use it.
    fn token(&self, consumer: &NoisePublicKey, token_id: &TokenId) -> Option<[u8; 16]>;
}

impl<F: Fn(&NoisePublicKey, &TokenId) -> Option<[u8; 16]>> Consumers for F {
    fn token(&self, consumer: &NoisePublicKey, token_id: &TokenId) -> Option<[u8; 16]> {
        self(consumer, token_id)
    }
}

/// The provider: its Noise static key and the hellos it accepted.
#[derive(Debug)]
pub struct Responder {
    key: NoiseSecretKey,
    replay: ReplayWindow,
    /// A chosen ephemeral key (golden vectors only).
    ephemeral: Option<[u8; 32]>,
}

impl Responder {
    /// A responder with static key `key`, remembering the last hello of at most
    /// `replay_capacity` consumer keys.
    pub fn new(key: NoiseSecretKey, replay_capacity: usize) -> Responder {
        Responder {
            key,
            replay: ReplayWindow::new(replay_capacity),
            ephemeral: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn fix_ephemeral(&mut self, e: [u8; 32]) {
        self.ephemeral = Some(e);
    }

    /// Reads message 1. On an error, send [`ResponderError::refusal`]'s frame (if
    /// any) and close the connection.
    pub fn read_hello<C: Consumers + ?Sized>(
        &mut self,
        frame: Frame<'_>,
        consumers: &C,
    ) -> Result<Pending, ResponderError> {
        if frame.kind != FrameKind::Handshake1 {
            return Err(ResponderError::Unexpected(frame.kind));
        }
        let own = self.key.to_bytes();
        let mut b = builder()
            .and_then(|b| b.local_private_key(&own))
            .map_err(noise_r)?;
        if let Some(e) = &self.ephemeral {
            b = b.fixed_ephemeral_key_for_testing_only(e);
        }
        let mut hs = b.build_responder().map_err(noise_r)?;
        let mut payload = vec![0; MAX_BODY];
        let n = hs
            .read_message(frame.body, &mut payload)
            .map_err(|_| ResponderError::Undecryptable)?;
        let hello = Hello::parse(&payload[..n]).map_err(ResponderError::Hello)?;
        let consumer = remote_static(&hs).ok_or(ResponderError::Noise("no remote static key"))?;
        let token = consumers
            .token(&consumer, &hello.token_id)
            .ok_or(ResponderError::UnknownConsumer)?;
        if !self.replay.is_fresh(&consumer, hello.timestamp) {
            return Err(ResponderError::Replayed);
        }
        hs.set_psk(2, &Psk::of(&token).0).map_err(noise_r)?;
        self.replay.accept(consumer, hello.timestamp);
        Ok(Pending {
            hs,
            consumer,
            hello,
            token,
        })
    }
}

/// The provider between message 1 and message 2: it decides, then answers.
pub struct Pending {
    hs: HandshakeState,
    consumer: NoisePublicKey,
    hello: Hello,
    token: [u8; 16],
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("consumer", &self.consumer)
            .field("hello", &self.hello)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// The consumer's Noise static key.
    pub fn consumer(&self) -> &NoisePublicKey {
        &self.consumer
    }

    /// What it asked.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The negotiation request it stands for (with the invite's token), for
    /// [`crate::negotiate::check`] and the store.
    pub fn wire_request(&self) -> crate::wire::Message {
        crate::wire::Message::Request {
            token: self.token,
            wg_key: self.hello.wg_key,
            proof: self.hello.proof,
        }
    }

    /// Appends message 2 carrying `reply` to `out`; the session follows.
    pub fn answer(
        mut self,
        reply: &Reply,
        out: &mut Vec<u8>,
    ) -> Result<ProviderSession, ResponderError> {
        let payload = reply.emit().map_err(ResponderError::Answer)?;
        let mut msg = vec![0; MAX_BODY];
        let n = self.hs.write_message(&payload, &mut msg).map_err(noise_r)?;
        let keys = split(&mut self.hs).ok_or(ResponderError::Noise("handshake unfinished"))?;
        encode(FrameKind::Handshake2, &msg[..n], out)
            .map_err(|_| ResponderError::Noise("message 2 too long"))?;
        Ok(ProviderSession::new(&keys))
    }
}

/// A builder for our protocol and prologue.
fn builder() -> Result<Builder<'static>, snow::Error> {
    Builder::new(NOISE_PARAMS.parse()?).prologue(PROLOGUE)
}

/// The transport keys of a finished handshake, by direction.
fn split(hs: &mut HandshakeState) -> Option<Keys> {
    hs.is_handshake_finished()
        .then(|| Keys::from_split(hs.dangerously_get_raw_split()))
}

fn remote_static(hs: &HandshakeState) -> Option<NoisePublicKey> {
    let rs: [u8; 32] = hs.get_remote_static()?.try_into().ok()?;
    Some(NoisePublicKey(rs))
}

fn noise(e: snow::Error) -> InitiatorError {
    InitiatorError::Noise(describe(&e))
}

fn noise_r(e: snow::Error) -> ResponderError {
    ResponderError::Noise(describe(&e))
}

fn describe(e: &snow::Error) -> &'static str {
    match e {
        snow::Error::Input => "invalid input",
        snow::Error::Dh => "X25519 failed (a low-order key)",
        snow::Error::Decrypt => "decryption failed",
        snow::Error::State(_) => "out of order",
        _ => "setup",
    }
}
