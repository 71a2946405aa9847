//! One transport session (a "keypair" in wireguard-go): the two ChaCha20-Poly1305
//! keys a handshake derived, the send counter, and the receive replay window.
//!
//! Encryption and decryption work in place in caller-owned buffers laid out as a
//! data message: 16-byte header, payload, 16-byte tag.

use crate::constants::{PADDING_MULTIPLE, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME};
use crate::crypto::AeadKey;
use crate::handshake::SessionKeys;
use crate::replay::ReplayWindow;
use crate::wire::{self, Data};
use std::sync::Arc;
use std::time::Instant;

/// Why a transport message could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The session has sent `REJECT_AFTER_MESSAGES` messages or is older than
    /// `REJECT_AFTER_TIME`: it must not be used again.
    #[error("session expired")]
    Expired,
    /// The counter was seen before or is older than the replay window.
    #[error("replayed or too old counter")]
    Replay,
    /// The message failed authentication.
    #[error("data message failed to decrypt")]
    Decrypt,
    /// The buffer cannot hold the header, the padded payload and the tag.
    #[error("buffer too small for the padded message")]
    BufferTooSmall,
    /// The buffer handed to [`seal_prepared`] is not a data message laid out by
    /// [`Session::prepare_seal`] (wrong type or reserved bytes, no room for the tag).
    /// It was wiped and must be dropped, never sent.
    #[error("not a prepared data message: wiped, to be dropped unsent")]
    NotPrepared,
}

/// Length of `len` bytes of plaintext padded to a multiple of 16, but never beyond
/// `mtu` (or `len` itself if larger).
pub fn padded_len(len: usize, mtu: usize) -> usize {
    let rounded = len.div_ceil(PADDING_MULTIPLE) * PADDING_MULTIPLE;
    rounded.min(mtu.max(len))
}

/// Encrypts a message laid out by [`Session::prepare_seal`] in place: header (with
/// the counter), padded plaintext, room for the tag.
///
/// A hard drop when `msg` is not such a message: it is wiped (every byte zeroed, so
/// no plaintext is left in it even for a caller that ignores the error) and
/// [`SessionError::NotPrepared`] says the caller must drop it, not send it.
pub fn seal_prepared(key: &AeadKey, msg: &mut [u8]) -> Result<(), SessionError> {
    let Ok(view) = Data::new_checked(&*msg) else {
        msg.fill(0);
        return Err(SessionError::NotPrepared);
    };
    let counter = view.counter();
    key.seal(counter, &[], &mut msg[wire::DATA_HEADER_LEN..]);
    Ok(())
}

/// Decrypts a data message in place with `key`; returns the (padded) plaintext length
/// at `msg[16..]`. Touches no session state: the caller checks the replay window.
pub fn open_with(key: &AeadKey, msg: &mut [u8]) -> Result<usize, SessionError> {
    let counter = Data::new_checked(&*msg)
        .map_err(|_| SessionError::Decrypt)?
        .counter();
    key.open(counter, &[], &mut msg[wire::DATA_HEADER_LEN..])
        .map_err(|_| SessionError::Decrypt)
}

/// An established transport session.
pub struct Session {
    // Shared so that a batching driver can seal and open on worker threads after
    // the device has moved on (the key outlives a session replaced mid-batch).
    send_key: Arc<AeadKey>,
    recv_key: Arc<AeadKey>,
    /// Our index: the receiver field of messages the peer sends us in this session.
    pub local_index: u32,
    /// The peer's index: the receiver field of messages we send.
    pub remote_index: u32,
    /// True when we initiated the handshake that made this session.
    pub is_initiator: bool,
    /// When the handshake completed.
    pub created: Instant,
    send_counter: u64,
    replay: ReplayWindow,
}

impl Session {
    /// Starts a session from freshly derived keys.
    pub fn new(keys: &SessionKeys, now: Instant) -> Self {
        Self {
            send_key: Arc::new(AeadKey::new(&keys.send)),
            recv_key: Arc::new(AeadKey::new(&keys.recv)),
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            is_initiator: keys.is_initiator,
            created: now,
            send_counter: 0,
            replay: ReplayWindow::new(),
        }
    }

    /// Messages sent so far (the next counter).
    pub fn send_counter(&self) -> u64 {
        self.send_counter
    }

    /// True while this session may still seal messages at `now`.
    pub fn can_send(&self, now: Instant) -> bool {
        self.send_counter < REJECT_AFTER_MESSAGES
            && now.saturating_duration_since(self.created) < REJECT_AFTER_TIME
    }

    /// True while this session may still open messages at `now`.
    pub fn can_receive(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) < REJECT_AFTER_TIME
    }

    /// Seals the plaintext at `buf[16..16 + len]` into a complete data message, padding
    /// it for `mtu`. Returns the message length. `buf` must have room for the padding
    /// and the tag.
    pub fn seal(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        len: usize,
        mtu: usize,
    ) -> Result<usize, SessionError> {
        let total = self.prepare_seal(now, buf, len, mtu)?;
        seal_prepared(&self.send_key, &mut buf[..total])?;
        Ok(total)
    }

    /// Everything of [`Session::seal`] but the encryption: takes the next counter,
    /// writes the header and the padding. Returns the message length; the message
    /// must then be sealed with [`seal_prepared`] under [`Session::send_key`] (on any
    /// thread) before it is sent.
    pub fn prepare_seal(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        len: usize,
        mtu: usize,
    ) -> Result<usize, SessionError> {
        if !self.can_send(now) {
            return Err(SessionError::Expired);
        }
        let padded = padded_len(len, mtu);
        let total = wire::DATA_HEADER_LEN + padded + wire::AEAD_TAG_LEN;
        let msg = buf.get_mut(..total).ok_or(SessionError::BufferTooSmall)?;
        msg[wire::DATA_HEADER_LEN + len..wire::DATA_HEADER_LEN + padded].fill(0);
        let counter = self.send_counter;
        self.send_counter += 1;
        let mut view = Data::new_unchecked(&mut *msg);
        view.fill_header();
        view.set_receiver(self.remote_index);
        view.set_counter(counter);
        Ok(total)
    }

    /// The key that seals what this session sends.
    pub fn send_key(&self) -> &Arc<AeadKey> {
        &self.send_key
    }

    /// The key that opens what this session receives.
    pub fn recv_key(&self) -> &Arc<AeadKey> {
        &self.recv_key
    }

    /// True when `counter` is inside the replay window and not seen yet (a check
    /// before decrypting; [`Session::accept_counter`] decides after).
    pub fn replay_would_accept(&self, counter: u64) -> bool {
        self.replay.would_accept(counter)
    }

    /// Marks `counter` of an authenticated message as seen; false when it was seen
    /// before (a duplicate that raced through [`Session::replay_would_accept`]).
    pub fn accept_counter(&mut self, counter: u64) -> bool {
        self.replay.accept(counter)
    }

    /// Opens a data message in place. On success the plaintext (still padded) is at
    /// `msg[16..16 + n]` and `n` is returned; the counter is then marked as seen.
    pub fn open(&mut self, now: Instant, msg: &mut [u8]) -> Result<usize, SessionError> {
        if !self.can_receive(now) {
            return Err(SessionError::Expired);
        }
        let counter = Data::new_checked(&*msg)
            .map_err(|_| SessionError::Decrypt)?
            .counter();
        if !self.replay.would_accept(counter) {
            return Err(SessionError::Replay);
        }
        let n = self
            .recv_key
            .open(counter, &[], &mut msg[wire::DATA_HEADER_LEN..])
            .map_err(|_| SessionError::Decrypt)?;
        if !self.replay.accept(counter) {
            return Err(SessionError::Replay);
        }
        Ok(n)
    }

    /// Forces the send counter (tests of the Reject-After-Messages limit).
    #[cfg(test)]
    pub(crate) fn set_send_counter(&mut self, c: u64) {
        self.send_counter = c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair(now: Instant) -> (Session, Session) {
        let a = SessionKeys {
            send: [1; 32],
            recv: [2; 32],
            local_index: 10,
            remote_index: 20,
            is_initiator: true,
        };
        let b = SessionKeys {
            send: [2; 32],
            recv: [1; 32],
            local_index: 20,
            remote_index: 10,
            is_initiator: false,
        };
        (Session::new(&a, now), Session::new(&b, now))
    }

    #[test]
    fn padding_rules() {
        assert_eq!(padded_len(0, 1420), 0);
        assert_eq!(padded_len(1, 1420), 16);
        assert_eq!(padded_len(16, 1420), 16);
        assert_eq!(padded_len(1419, 1420), 1420);
        assert_eq!(padded_len(1415, 1420), 1420);
        assert_eq!(padded_len(1500, 1420), 1500);
    }

    #[test]
    fn seal_open_replay_and_tamper() {
        let now = crate::test_now();
        let (mut a, mut b) = pair(now);
        let mut buf = [0u8; 128];
        buf[16..21].copy_from_slice(b"hello");
        let n = a.seal(now, &mut buf, 5, 1420).unwrap();
        assert_eq!(n, 16 + 16 + 16);
        let copy = buf;
        let p = b.open(now, &mut buf[..n]).unwrap();
        assert_eq!(p, 16);
        assert_eq!(&buf[16..21], b"hello");
        let mut again = copy;
        assert_eq!(b.open(now, &mut again[..n]), Err(SessionError::Replay));
        let mut bad = copy;
        bad[20] ^= 1;
        let mut fresh = pair(now).1;
        assert_eq!(fresh.open(now, &mut bad[..n]), Err(SessionError::Decrypt));
    }

    /// What `seal_prepared` cannot seal is a hard drop: it says so and leaves no
    /// plaintext in the buffer (before, it returned quietly with the buffer as it was,
    /// and a caller sent the plaintext).
    #[test]
    fn seal_prepared_wipes_and_refuses_what_it_cannot_seal() {
        let key = AeadKey::new(&[9u8; 32]);
        let secret = b"plaintext that must never leave the host";
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // A handshake type byte, bad reserved bytes, too short for the tag.
        for (kind, reserved, len) in [(1u8, 0u8, 80usize), (4, 1, 80), (4, 0, 16 + 15)] {
            let mut m = vec![0u8; len];
            m[0] = kind;
            m[1] = reserved;
            let room = (len - 16).min(secret.len());
            m[16..16 + room].copy_from_slice(&secret[..room]);
            cases.push(m);
        }
        for (i, mut m) in cases.into_iter().enumerate() {
            let r = seal_prepared(&key, &mut m);
            assert_eq!(r, Err(SessionError::NotPrepared), "case {i}");
            assert!(m.iter().all(|&b| b == 0), "case {i}: plaintext left: {m:?}");
        }
        // A prepared message still seals (and opens).
        let now = crate::test_now();
        let (mut a, mut b) = pair(now);
        let mut buf = [0u8; 96];
        buf[16..16 + secret.len()].copy_from_slice(secret);
        let n = a.prepare_seal(now, &mut buf, secret.len(), 1420).unwrap();
        assert_eq!(seal_prepared(a.send_key(), &mut buf[..n]), Ok(()));
        assert!(!buf.windows(secret.len()).any(|w| w == secret));
        let p = b.open(now, &mut buf[..n]).unwrap();
        assert_eq!(&buf[16..16 + secret.len()], secret);
        assert_eq!(p, 48);
    }

    #[test]
    fn reject_after_messages_and_time() {
        let now = crate::test_now();
        let (mut a, _) = pair(now);
        let mut buf = [0u8; 64];
        a.set_send_counter(REJECT_AFTER_MESSAGES - 1);
        assert!(a.seal(now, &mut buf, 0, 1420).is_ok());
        assert_eq!(a.seal(now, &mut buf, 0, 1420), Err(SessionError::Expired));
        let (mut c, mut d) = pair(now);
        let later = now + REJECT_AFTER_TIME + Duration::from_millis(1);
        assert_eq!(c.seal(later, &mut buf, 0, 1420), Err(SessionError::Expired));
        let n = c.seal(now, &mut buf, 0, 1420).unwrap();
        assert_eq!(d.open(later, &mut buf[..n]), Err(SessionError::Expired));
    }
}
