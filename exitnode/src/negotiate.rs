//! The provider's answer to one exit negotiation datagram: parse ([`crate::wire`]),
//! decide ([`Store::authorize`]), and the reply to send back. Pure: the caller owns the
//! socket, the clock and the store file (it saves the store before sending an ack, so
//! a grant is never given that a crash could forget).

use crate::store::{Grant, Store};
use crate::wire::Message;
use base64::Engine as _;
use std::net::IpAddr;

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

/// Answers `datagram` at `now` (Unix seconds); `resolver` is the DNS forwarder's
/// address inside the tunnel.
pub fn answer(store: &mut Store, now: u64, datagram: &[u8], resolver: IpAddr) -> Answer {
    let Ok(Message::Request { token, wg_key }) = Message::parse(datagram) else {
        return Answer::Ignore;
    };
    let key = base64::engine::general_purpose::STANDARD.encode(wg_key);
    match store.authorize(now, &token, &key) {
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
        Err(r) => Answer::Refuse {
            reply: Message::Nak(r).emit(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Refusal;

    fn request(token: [u8; 16], key: u8) -> Vec<u8> {
        Message::Request {
            token,
            wg_key: [key; 32],
        }
        .emit()
    }

    #[test]
    fn a_valid_request_is_granted_then_the_invite_is_used_up() {
        let mut store = Store::default();
        store.issue(&[5; 16], "neg", 100, 1).unwrap();
        let resolver: IpAddr = "100.64.0.1".parse().unwrap();
        let Answer::Grant {
            wg_key,
            grant,
            reply,
        } = answer(&mut store, 10, &request([5; 16], 1), resolver)
        else {
            panic!("not granted");
        };
        assert_eq!(
            wg_key,
            base64::engine::general_purpose::STANDARD.encode([1u8; 32])
        );
        assert_eq!(
            Message::parse(&reply),
            Ok(Message::Ack {
                inner_v4: grant.inner_v4,
                inner_v6: None,
                resolver
            })
        );
        let refused = answer(&mut store, 11, &request([5; 16], 2), resolver);
        assert_eq!(
            refused,
            Answer::Refuse {
                reply: Message::Nak(Refusal::UsedUp).emit()
            }
        );
    }

    #[test]
    fn garbage_and_provider_messages_are_ignored() {
        let mut store = Store::default();
        let r: IpAddr = "100.64.0.1".parse().unwrap();
        assert_eq!(answer(&mut store, 0, b"hello", r), Answer::Ignore);
        let nak = Message::Nak(Refusal::Expired).emit();
        assert_eq!(answer(&mut store, 0, &nak, r), Answer::Ignore);
        assert_eq!(
            answer(&mut store, 0, &request([1; 16], 1), r),
            Answer::Refuse {
                reply: Message::Nak(Refusal::UnknownToken).emit()
            }
        );
    }
}
