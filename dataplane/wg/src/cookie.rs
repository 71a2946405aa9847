//! MAC1, MAC2 and cookie replies (WireGuard paper §5.4.4 and §5.4.7).
//!
//! [`CookieChecker`] is the receiving side of one device: it verifies MAC1 on every
//! handshake message, and under load verifies MAC2 against a cookie bound to the
//! sender's IP address *and port*, answering with an encrypted cookie reply when it is
//! missing. [`CookieGenerator`] is the sending side, one per peer: it adds MAC1, adds
//! MAC2 while it holds a fresh cookie, and consumes cookie replies.

use crate::constants::COOKIE_REFRESH_TIME;
use crate::crypto::{self, hash, mac_keyed, xaead_open, xaead_seal};
use crate::keys::PublicKey;
use crate::wire::CookieReply;
use std::net::SocketAddr;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// Why a cookie reply was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// We have not sent a handshake message this reply could answer.
    #[error("cookie reply without a handshake message in flight")]
    Unsolicited,
    /// The encrypted cookie did not authenticate against our last MAC1.
    #[error("cookie reply failed to decrypt")]
    Decrypt,
}

/// Offset of MAC1 in a handshake message: 32 bytes from its end.
fn mac1_offset(msg: &[u8]) -> usize {
    msg.len().saturating_sub(32)
}

/// Offset of MAC2 in a handshake message: 16 bytes from its end.
fn mac2_offset(msg: &[u8]) -> usize {
    msg.len().saturating_sub(16)
}

fn source_bytes(src: SocketAddr, out: &mut [u8; 18]) -> usize {
    let port = src.port().to_be_bytes();
    match src {
        SocketAddr::V4(a) => {
            out[..4].copy_from_slice(&a.ip().octets());
            out[4..6].copy_from_slice(&port);
            6
        }
        SocketAddr::V6(a) => {
            out[..16].copy_from_slice(&a.ip().octets());
            out[16..18].copy_from_slice(&port);
            18
        }
    }
}

/// Verifies MACs on handshake messages sent to this device and makes cookie replies.
pub struct CookieChecker {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    secret: [u8; 32],
    secret_set: Option<Instant>,
}

impl CookieChecker {
    /// A checker for messages addressed to `local` (our public key).
    pub fn new(local: &PublicKey) -> Self {
        Self {
            mac1_key: hash(&[crypto::LABEL_MAC1, local.as_bytes()]),
            cookie_key: hash(&[crypto::LABEL_COOKIE, local.as_bytes()]),
            secret: [0; 32],
            secret_set: None,
        }
    }

    /// True when the message's MAC1 is valid for our public key.
    pub fn check_mac1(&self, msg: &[u8]) -> bool {
        let off = mac1_offset(msg);
        if msg.len() < 32 {
            return false;
        }
        let want = mac_keyed(&self.mac1_key, &[&msg[..off]]);
        want.ct_eq(&msg[off..off + 16]).into()
    }

    fn cookie_for(&self, src: SocketAddr) -> [u8; 16] {
        let mut b = [0u8; 18];
        let n = source_bytes(src, &mut b);
        mac_keyed(&self.secret, &[&b[..n]])
    }

    /// True when the message's MAC2 proves the sender holds our current cookie for
    /// `src` (address and port).
    pub fn check_mac2(&self, now: Instant, msg: &[u8], src: SocketAddr) -> bool {
        let Some(set) = self.secret_set else {
            return false;
        };
        if now.saturating_duration_since(set) > COOKIE_REFRESH_TIME || msg.len() < 32 {
            return false;
        }
        let cookie = self.cookie_for(src);
        let off = mac2_offset(msg);
        let want = mac_keyed(&cookie, &[&msg[..off]]);
        want.ct_eq(&msg[off..]).into()
    }

    /// Writes a cookie reply to the handshake message `msg` (whose sender index is
    /// `receiver`) that arrived from `src`, rotating the secret when it is stale.
    pub fn create_reply(
        &mut self,
        now: Instant,
        rng: &mut impl rand_core::CryptoRngCore,
        msg: &[u8],
        receiver: u32,
        src: SocketAddr,
        out: &mut CookieReply<&mut [u8]>,
    ) {
        let stale = self
            .secret_set
            .is_none_or(|t| now.saturating_duration_since(t) > COOKIE_REFRESH_TIME);
        if stale {
            rng.fill_bytes(&mut self.secret);
            self.secret_set = Some(now);
        }
        let cookie = self.cookie_for(src);
        let off = mac1_offset(msg);
        let mac1 = msg.get(off..off + 16).unwrap_or(&[0u8; 16]);
        out.fill_header();
        out.set_receiver(receiver);
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        *out.nonce_mut() = nonce;
        *out.encrypted_cookie_mut() = xaead_seal(&self.cookie_key, &nonce, mac1, &cookie);
    }
}

/// Adds MACs to the handshake messages we send one peer; holds its latest cookie.
pub struct CookieGenerator {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    last_mac1: Option<[u8; 16]>,
    cookie: Option<([u8; 16], Instant)>,
}

impl CookieGenerator {
    /// A generator for messages addressed to `remote`.
    pub fn new(remote: &PublicKey) -> Self {
        Self {
            mac1_key: hash(&[crypto::LABEL_MAC1, remote.as_bytes()]),
            cookie_key: hash(&[crypto::LABEL_COOKIE, remote.as_bytes()]),
            last_mac1: None,
            cookie: None,
        }
    }

    /// Fills MAC1, and MAC2 when a cookie younger than two minutes is held, into the
    /// last 32 bytes of the handshake message `msg`.
    pub fn add_macs(&mut self, now: Instant, msg: &mut [u8]) {
        let off1 = mac1_offset(msg);
        let mac1 = mac_keyed(&self.mac1_key, &[&msg[..off1]]);
        msg[off1..off1 + 16].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let off2 = mac2_offset(msg);
        let mac2 = match self.cookie {
            Some((c, at)) if now.saturating_duration_since(at) <= COOKIE_REFRESH_TIME => {
                mac_keyed(&c, &[&msg[..off2]])
            }
            _ => [0u8; 16],
        };
        msg[off2..].copy_from_slice(&mac2);
    }

    /// Decrypts and stores the cookie of a reply to our last handshake message.
    pub fn consume_reply(
        &mut self,
        now: Instant,
        reply: &CookieReply<&[u8]>,
    ) -> Result<(), CookieError> {
        let last = self.last_mac1.ok_or(CookieError::Unsolicited)?;
        let cookie = xaead_open(
            &self.cookie_key,
            reply.nonce(),
            &last,
            reply.encrypted_cookie(),
        )
        .map_err(|_| CookieError::Decrypt)?;
        self.cookie = Some((cookie, now));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, Initiation};
    use rand_core::SeedableRng;

    fn msg_for(gen: &mut CookieGenerator, now: Instant) -> [u8; wire::INITIATION_LEN] {
        msg_with_sender(gen, now, 42)
    }

    fn msg_with_sender(
        gen: &mut CookieGenerator,
        now: Instant,
        sender: u32,
    ) -> [u8; wire::INITIATION_LEN] {
        let mut m = [0u8; wire::INITIATION_LEN];
        {
            let mut v = Initiation::new_unchecked(&mut m[..]);
            v.fill_header();
            v.set_sender(sender);
        }
        gen.add_macs(now, &mut m);
        m
    }

    #[test]
    fn mac1_mac2_and_cookie_round_trip() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let responder = PublicKey(crate::crypto::dh_public(&[2u8; 32]));
        let mut checker = CookieChecker::new(&responder);
        let mut gen = CookieGenerator::new(&responder);
        let now = crate::test_now();
        let src: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let m = msg_for(&mut gen, now);
        assert!(checker.check_mac1(&m));
        assert!(!checker.check_mac2(now, &m, src), "no cookie yet");
        let mut reply = [0u8; wire::COOKIE_REPLY_LEN];
        checker.create_reply(
            now,
            &mut rng,
            &m,
            42,
            src,
            &mut CookieReply::new_unchecked(&mut reply[..]),
        );
        let r = CookieReply::new_checked(&reply[..]).unwrap();
        assert_eq!(r.receiver(), 42);
        gen.consume_reply(now, &r).unwrap();
        let m2 = msg_for(&mut gen, now);
        assert!(checker.check_mac1(&m2));
        assert!(checker.check_mac2(now, &m2, src));
        // The cookie is bound to the source port as well as the address.
        assert!(!checker.check_mac2(now, &m2, "10.0.0.1:5001".parse().unwrap()));
        assert!(!checker.check_mac2(now, &m2, "10.0.0.2:5000".parse().unwrap()));
        // And it expires.
        assert!(!checker.check_mac2(now + COOKIE_REFRESH_TIME * 2, &m2, src));
        // A reply encrypted against another MAC1 is refused.
        let _ = msg_with_sender(&mut gen, now, 43);
        assert_eq!(gen.consume_reply(now, &r), Err(CookieError::Decrypt));
    }

    #[test]
    fn mac1_for_someone_else_fails() {
        let a = PublicKey([1u8; 32]);
        let b = PublicKey([2u8; 32]);
        let mut gen = CookieGenerator::new(&a);
        let m = msg_for(&mut gen, crate::test_now());
        assert!(CookieChecker::new(&a).check_mac1(&m));
        assert!(!CookieChecker::new(&b).check_mac1(&m));
        let mut fresh = CookieGenerator::new(&a);
        let reply = [0u8; wire::COOKIE_REPLY_LEN];
        let r = CookieReply::new_unchecked(&reply[..]);
        assert_eq!(
            fresh.consume_reply(crate::test_now(), &r),
            Err(CookieError::Unsolicited)
        );
    }
}
