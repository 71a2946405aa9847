//! The provider's answer to one exit negotiation datagram: parse ([`crate::wire`]),
//! check the proof of key ownership ([`check`]), decide ([`Store::authorize`]), and
//! the reply to send back. Pure: the caller owns the socket, the clock and the store
//! file (it saves the store before sending an ack, so a grant is never given that a
//! crash could forget).
//!
//! Proof of key ownership: a request registers the WireGuard key `C` of its sender,
//! and carries `proof = BLAKE3 keyed_hash(k, request bytes before the proof)` with
//! `k = BLAKE3 derive_key(PROOF_CONTEXT, X25519(c, P) || C || P)`, where `c` is the
//! consumer's private key and `P` the provider's WireGuard public key (from the
//! invite). The provider computes the same `k` from `X25519(p, C)`. Only the holder
//! of `c` (or the provider) can make it, so an invite holder cannot register someone
//! else's key and take over its grant. A key whose shared secret is all zeros (a
//! low-order point) is refused: anyone could compute that proof.

use crate::store::{Grant, Refusal, Store};
use crate::wire::{Message, WireError, REQUEST_SIGNED_LEN};
use base64::Engine as _;
use std::net::IpAddr;

/// The BLAKE3 key-derivation context of the proof key.
pub const PROOF_CONTEXT: &str = "portdistrict 2026-11 exit request proof";

/// What to do with one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not a request (garbage, or a message only providers send): drop it, no reply.
    Ignore,
    /// Authorized: add the consumer as a WireGuard peer with its inner addresses (its
    /// key in base64, as `wg` writes it), persist the store, then send `reply`.
    Grant {
        /// The consumer's WireGuard public key, base64.
        wg_key: String,
        /// Its addresses.
        grant: Grant,
        /// The ack to send.
        reply: Vec<u8>,
    },
    /// Refused: send `reply` (a nak with the reason).
    Refuse {
        /// The nak to send.
        reply: Vec<u8>,
    },
}

impl Answer {
    /// A refusal for `reason`.
    pub fn refuse(reason: Refusal) -> Answer {
        Answer::Refuse {
            reply: Message::Nak(reason).emit(),
        }
    }
}

/// A request whose proof verified: its sender holds `wg_key`'s private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    token: [u8; 16],
    wg_key: [u8; 32],
}

/// The proof key of consumer key `consumer_public` and provider key
/// `provider_public`, from their X25519 shared secret; `None` for a non-contributory
/// (low-order) key.
fn proof_key(
    shared: &x25519_dalek::SharedSecret,
    consumer_public: &[u8; 32],
    provider_public: &[u8; 32],
) -> Option<[u8; 32]> {
    if !shared.was_contributory() {
        return None;
    }
    let mut material = [0u8; 96];
    material[..32].copy_from_slice(shared.as_bytes());
    material[32..64].copy_from_slice(consumer_public);
    material[64..].copy_from_slice(provider_public);
    let key = blake3::derive_key(PROOF_CONTEXT, &material);
    material.fill(0);
    Some(key)
}

fn mac(key: &[u8; 32], signed: &[u8]) -> blake3::Hash {
    blake3::keyed_hash(key, signed)
}

/// The exit request for `token` from the consumer with private WireGuard key
/// `consumer_private`, to the provider with public WireGuard key `provider_public`
/// (the invite's), with its proof of key ownership.
pub fn request(
    token: [u8; 16],
    consumer_private: &[u8; 32],
    provider_public: &[u8; 32],
) -> Message {
    let secret = x25519_dalek::StaticSecret::from(*consumer_private);
    let wg_key = x25519_dalek::PublicKey::from(&secret).to_bytes();
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*provider_public));
    let mut m = Message::Request {
        token,
        wg_key,
        proof: [0; 32],
    };
    // A consumer key is never low-order (it is a clamped scalar's public key), and a
    // provider key that is gets a proof no provider accepts.
    if let Some(key) = proof_key(&shared, &wg_key, provider_public) {
        let signed = m.emit();
        if let Message::Request { proof, .. } = &mut m {
            *proof = *mac(&key, &signed[..REQUEST_SIGNED_LEN]).as_bytes();
        }
    }
    m
}

/// Checks `datagram` for the provider with private WireGuard key `provider_private`:
/// a request whose proof verifies, or the answer to give without looking at the store
/// (ignore garbage and provider messages, refuse old versions and bad proofs).
pub fn check(datagram: &[u8], provider_private: &[u8; 32]) -> Result<Verified, Answer> {
    let (token, wg_key, proof) = match Message::parse(datagram) {
        Ok(Message::Request {
            token,
            wg_key,
            proof,
        }) => (token, wg_key, proof),
        Err(WireError::Outdated(_)) => return Err(Answer::refuse(Refusal::Outdated)),
        Ok(_) | Err(_) => return Err(Answer::Ignore),
    };
    let secret = x25519_dalek::StaticSecret::from(*provider_private);
    let provider_public = x25519_dalek::PublicKey::from(&secret).to_bytes();
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(wg_key));
    let Some(key) = proof_key(&shared, &wg_key, &provider_public) else {
        return Err(Answer::refuse(Refusal::BadProof));
    };
    let signed = datagram.get(..REQUEST_SIGNED_LEN).ok_or(Answer::Ignore)?;
    // blake3::Hash compares in constant time.
    if mac(&key, signed) != blake3::Hash::from_bytes(proof) {
        return Err(Answer::refuse(Refusal::BadProof));
    }
    Ok(Verified { token, wg_key })
}

/// Decides a verified request at `now` (Unix seconds); `resolver` is the DNS
/// forwarder's address inside the tunnel.
pub fn decide(store: &mut Store, now: u64, request: &Verified, resolver: IpAddr) -> Answer {
    let key = base64::engine::general_purpose::STANDARD.encode(request.wg_key);
    match store.authorize(now, &request.token, &key) {
        Ok(grant) => Answer::Grant {
            reply: Message::Ack {
                inner_v4: grant.inner_v4,
                inner_v6: grant.inner_v6,
                resolver,
            }
            .emit(),
            wg_key: key,
            grant,
        },
        Err(r) => Answer::refuse(r),
    }
}

/// Answers `datagram` at `now` (Unix seconds) for the provider with private
/// WireGuard key `provider_private`: [`check`], then [`decide`].
pub fn answer(
    store: &mut Store,
    now: u64,
    datagram: &[u8],
    resolver: IpAddr,
    provider_private: &[u8; 32],
) -> Answer {
    match check(datagram, provider_private) {
        Ok(r) => decide(store, now, &r, resolver),
        Err(a) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROVIDER: [u8; 32] = [9; 32];

    fn public(private: [u8; 32]) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(private)).to_bytes()
    }

    fn request_by(token: [u8; 16], key: u8) -> Vec<u8> {
        request(token, &[key; 32], &public(PROVIDER)).emit()
    }

    #[test]
    fn a_valid_request_is_granted_then_the_invite_is_used_up() {
        let mut store = Store::default();
        store.issue(&[5; 16], 100, 1).unwrap();
        let resolver: IpAddr = "100.64.0.1".parse().unwrap();
        let Answer::Grant {
            wg_key,
            grant,
            reply,
        } = answer(&mut store, 10, &request_by([5; 16], 1), resolver, &PROVIDER)
        else {
            panic!("not granted");
        };
        assert_eq!(
            wg_key,
            base64::engine::general_purpose::STANDARD.encode(public([1; 32]))
        );
        assert_eq!(
            Message::parse(&reply),
            Ok(Message::Ack {
                inner_v4: grant.inner_v4,
                inner_v6: None,
                resolver
            })
        );
        let refused = answer(&mut store, 11, &request_by([5; 16], 2), resolver, &PROVIDER);
        assert_eq!(refused, Answer::refuse(Refusal::UsedUp));
    }

    #[test]
    fn a_request_for_a_victims_key_proved_with_another_key_is_refused() {
        let mut store = Store::default();
        store.issue(&[5; 16], 100, 1).unwrap();
        store.issue(&[6; 16], 100, 1).unwrap();
        let r: IpAddr = "100.64.0.1".parse().unwrap();
        let victim = public([1; 32]);
        assert!(matches!(
            answer(&mut store, 10, &request_by([5; 16], 1), r, &PROVIDER),
            Answer::Grant { .. }
        ));
        let before = store.clone();
        // The attacker holds a valid token and knows the victim's public key: it puts
        // that key in a request proved with its own key.
        let Message::Request { proof, .. } = request([6; 16], &[2; 32], &public(PROVIDER)) else {
            unreachable!()
        };
        let forged = Message::Request {
            token: [6; 16],
            wg_key: victim,
            proof,
        };
        assert_eq!(
            answer(&mut store, 11, &forged.emit(), r, &PROVIDER),
            Answer::refuse(Refusal::BadProof)
        );
        // A proof for another provider does not verify here either.
        let elsewhere = request([6; 16], &[1; 32], &public([8; 32]));
        assert_eq!(
            answer(&mut store, 11, &elsewhere.emit(), r, &PROVIDER),
            Answer::refuse(Refusal::BadProof)
        );
        // Nor one with a changed token.
        let mut changed = request_by([5; 16], 1);
        changed[5] ^= 1;
        assert_eq!(
            answer(&mut store, 11, &changed, r, &PROVIDER),
            Answer::refuse(Refusal::BadProof)
        );
        assert_eq!(
            store, before,
            "the victim's grant and the invites are unchanged"
        );
    }

    #[test]
    fn low_order_keys_are_refused() {
        let mut store = Store::default();
        store.issue(&[5; 16], 100, 1).unwrap();
        let r: IpAddr = "100.64.0.1".parse().unwrap();
        // The all-zero key: X25519 with it is zero, which anyone could key a MAC with.
        let mut m = Message::Request {
            token: [5; 16],
            wg_key: [0; 32],
            proof: [0; 32],
        }
        .emit();
        let key = blake3::derive_key(PROOF_CONTEXT, &{
            let mut x = [0u8; 96];
            x[64..].copy_from_slice(&public(PROVIDER));
            x
        });
        let p = mac(&key, &m[..REQUEST_SIGNED_LEN]);
        m[REQUEST_SIGNED_LEN..].copy_from_slice(p.as_bytes());
        assert_eq!(
            answer(&mut store, 10, &m, r, &PROVIDER),
            Answer::refuse(Refusal::BadProof)
        );
        assert!(store.consumers.is_empty());
    }

    /// The golden request of docs/protocol.md, computed.
    fn golden() -> String {
        let m = request([0xab; 16], &[1; 32], &public(PROVIDER));
        let bytes = m.emit();
        let mut g = format!(
            "consumer WireGuard key C  {}\nprovider WireGuard key P  {}\nrequest\n",
            hex(&public([1; 32])),
            hex(&public(PROVIDER))
        );
        for line in bytes.chunks(32) {
            g.push_str("  ");
            g.push_str(&hex(line));
            g.push('\n');
        }
        g
    }

    #[test]
    fn docs_protocol_md_has_the_golden_request() {
        let m = request([0xab; 16], &[1; 32], &public(PROVIDER));
        assert!(check(&m.emit(), &PROVIDER).is_ok());
        crate::golden_doc::check("exit-golden", &golden());
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn garbage_old_versions_and_provider_messages() {
        let mut store = Store::default();
        let r: IpAddr = "100.64.0.1".parse().unwrap();
        assert_eq!(
            answer(&mut store, 0, b"hello", r, &PROVIDER),
            Answer::Ignore
        );
        let nak = Message::Nak(Refusal::Expired).emit();
        assert_eq!(answer(&mut store, 0, &nak, r, &PROVIDER), Answer::Ignore);
        let mut v1 = b"PDX\x01\x01".to_vec();
        v1.extend_from_slice(&[1; 48]);
        assert_eq!(
            answer(&mut store, 0, &v1, r, &PROVIDER),
            Answer::refuse(Refusal::Outdated)
        );
        assert_eq!(
            answer(&mut store, 0, &request_by([1; 16], 1), r, &PROVIDER),
            Answer::refuse(Refusal::UnknownToken)
        );
    }
}
