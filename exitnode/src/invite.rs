//! Exit invites: one line, `portdistrict-invite1:<base64url>`, that a provider hands
//! to a consumer out of band. Versioned, signed by the provider (Ed25519), carrying
//! the provider's endpoints, its WireGuard public key, a token, an expiry, the number
//! of uses, a transport, and the negotiation identity.
//!
//! WireGuard only answers peers it knows, and the provider cannot know a consumer's
//! key before the consumer asks. So the invite carries a one-off WireGuard identity
//! for negotiation: an X25519 private key and an inner address. The provider, which
//! made them, keeps the public key configured as a peer whose AllowedIPs is that one
//! address (and its firewall lets that peer reach only the negotiation port); the
//! consumer's first handshake uses this identity, sends its exit request with its own
//! key, and switches to its own key once acked. That is how the first handshake is
//! authorized for the negotiation only.
//!
//! Binary layout (all integers big-endian), then the signature over everything
//! before it:
//!
//! ```text
//! version u8 (1) | transport u8 (1 = WireGuard over UDP) | wg_key [32] | signer [32]
//! | token [16] | negotiation key [32] | negotiation address [4]
//! | expires u64 (Unix seconds) | uses u16 | endpoint count u8 (1..=8)
//! | endpoints: family u8 (4 or 6), address [4 or 16], port u16 | signature [64]
//! ```
//!
//! Decoding checks everything it can without the provider's state: label, base64url,
//! version and transport (unknown ones ask for an upgrade), structure, and the
//! signature under the embedded signer key (so a changed byte is caught). Whether the
//! signer is the provider itself, the token known, unused, unrevoked and unexpired is
//! for the provider to decide ([`Invite::check_expiry`] takes the time as an argument).

use portdistrict_control_core::codec::{BlobError, CodecError, Label, Reader, Writer};
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use std::net::{Ipv4Addr, SocketAddr};

/// The label every invite starts with.
pub const PREFIX: &str = LABEL.prefix();
const LABEL: Label = Label::new("portdistrict-invite1:");
/// The one binary version this code writes and reads.
pub const VERSION: u8 = 1;
/// Most endpoints an invite carries.
pub const MAX_ENDPOINTS: usize = 8;
const SIGNATURE_LEN: usize = 64;

/// How the consumer reaches the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WireGuard over UDP to the endpoints.
    WireGuardUdp,
}

impl Transport {
    fn code(self) -> u8 {
        match self {
            Transport::WireGuardUdp => 1,
        }
    }
}

/// What an invite says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// The transport.
    pub transport: Transport,
    /// The provider's WireGuard public key.
    pub wg_key: [u8; 32],
    /// The Ed25519 public key that signed the invite (the provider's).
    pub signer: [u8; 32],
    /// The secret the consumer presents in its exit request.
    pub token: [u8; 16],
    /// The X25519 private key of the one-off negotiation identity.
    pub negotiation_key: [u8; 32],
    /// The inner address that goes with it (the provider routes its replies there).
    pub negotiation_addr: Ipv4Addr,
    /// When it stops being valid, Unix seconds.
    pub expires: u64,
    /// How many consumers may use it.
    pub uses: u16,
    /// Where the provider listens.
    pub endpoints: Vec<SocketAddr>,
}

/// Why an invite was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// The text does not start with [`PREFIX`].
    #[error("not a portdistrict invite: it must start with {PREFIX:?}")]
    NotAnInvite,
    /// An invite of a later format (`portdistrict-inviteN:` or a newer version byte).
    #[error("invite format version {0} is newer than this portdistrict understands: upgrade portdistrict")]
    UnknownVersion(u8),
    /// A transport this version does not know.
    #[error("invite asks for transport {0}, unknown to this portdistrict: upgrade portdistrict")]
    UnknownTransport(u8),
    /// The part after the label is not base64url.
    #[error("invite is damaged: not base64url ({0})")]
    Base64(String),
    /// The invite ends early.
    #[error("invite is damaged: it ends inside the {0}")]
    Truncated(&'static str),
    /// Bytes after the signature.
    #[error("invite is damaged: {0} unexpected bytes after the signature")]
    Trailing(usize),
    /// An endpoint count of 0 or above [`MAX_ENDPOINTS`], or a bad address family.
    #[error("invite is damaged: {0}")]
    Malformed(&'static str),
    /// The signature does not verify: the invite was altered.
    #[error("invite signature does not verify: it was altered or is not from this provider")]
    BadSignature,
    /// Past its expiry.
    #[error("invite expired at {expires} (Unix time); ask the provider for a new one")]
    Expired {
        /// The expiry, Unix seconds.
        expires: u64,
    },
}

impl From<CodecError> for InviteError {
    fn from(e: CodecError) -> InviteError {
        match e {
            CodecError::Truncated(field) => InviteError::Truncated(field),
            CodecError::NotText(_) => InviteError::Malformed("a field is not text"),
            CodecError::Family { .. } => InviteError::Malformed("endpoint family must be 4 or 6"),
        }
    }
}

impl Invite {
    /// The invite as one line, signed with `key` (whose public key must be
    /// [`Invite::signer`]; it is written from `key`).
    pub fn encode(&self, key: &Ed25519KeyPair) -> String {
        let eps = &self.endpoints[..self.endpoints.len().min(MAX_ENDPOINTS)];
        let mut body = Writer::new();
        body.u8(VERSION)
            .u8(self.transport.code())
            .bytes(&self.wg_key)
            .bytes(key.public_key().as_ref())
            .bytes(&self.token)
            .bytes(&self.negotiation_key)
            .bytes(&self.negotiation_addr.octets())
            .u64(self.expires)
            .u16(self.uses)
            .u8(eps.len() as u8);
        for ep in eps {
            body.socket_addr(*ep);
        }
        let sig = key.sign(body.as_bytes());
        body.bytes(sig.as_ref());
        LABEL.encode(body.as_bytes())
    }

    /// Parses and verifies one invite line (surrounding whitespace allowed).
    pub fn decode(text: &str) -> Result<Invite, InviteError> {
        let bytes = LABEL.decode(text).map_err(|e| match e {
            BlobError::Foreign => InviteError::NotAnInvite,
            BlobError::Later(v) => InviteError::UnknownVersion(v),
            BlobError::Base64(e) => InviteError::Base64(e),
        })?;
        let mut r = Reader::new(&bytes);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(InviteError::UnknownVersion(version));
        }
        let transport = match r.u8("transport")? {
            1 => Transport::WireGuardUdp,
            t => return Err(InviteError::UnknownTransport(t)),
        };
        let wg_key = r.array("WireGuard key")?;
        let signer: [u8; 32] = r.array("signer key")?;
        let token = r.array("token")?;
        let negotiation_key = r.array("negotiation key")?;
        let negotiation_addr = Ipv4Addr::from(r.array::<4>("negotiation address")?);
        let expires = r.u64("expiry")?;
        let uses = r.u16("use count")?;
        let count = usize::from(r.u8("endpoint count")?);
        if count == 0 || count > MAX_ENDPOINTS {
            return Err(InviteError::Malformed("endpoint count must be 1 to 8"));
        }
        let mut endpoints = Vec::with_capacity(count);
        for _ in 0..count {
            endpoints.push(r.socket_addr("endpoint")?);
        }
        let signed_len = r.consumed();
        let sig: [u8; SIGNATURE_LEN] = r.array("signature")?;
        if !r.is_empty() {
            return Err(InviteError::Trailing(r.rest().len()));
        }
        UnparsedPublicKey::new(&ED25519, signer)
            .verify(&bytes[..signed_len], &sig)
            .map_err(|_| InviteError::BadSignature)?;
        Ok(Invite {
            transport,
            wg_key,
            signer,
            token,
            negotiation_key,
            negotiation_addr,
            expires,
            uses,
            endpoints,
        })
    }

    /// Refuses the invite at or after its expiry (`now`: Unix seconds).
    pub fn check_expiry(&self, now: u64) -> Result<(), InviteError> {
        if now >= self.expires {
            return Err(InviteError::Expired {
                expires: self.expires,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const HEADER_LEN: usize = 1 + 1 + 32 + 32 + 16 + 32 + 4 + 8 + 2 + 1;

    /// A fixed key (RFC 8032 test 1 seed) so that encodings are reproducible.
    fn key() -> Ed25519KeyPair {
        let seed = hex_seed("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        Ed25519KeyPair::from_seed_unchecked(&seed).unwrap()
    }

    fn hex_seed(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    fn example() -> Invite {
        let k = key();
        Invite {
            transport: Transport::WireGuardUdp,
            wg_key: [7; 32],
            signer: k.public_key().as_ref().try_into().unwrap(),
            token: [9; 16],
            negotiation_key: [5; 32],
            negotiation_addr: Ipv4Addr::new(100, 127, 0, 2),
            expires: 1_800_000_000,
            uses: 1,
            endpoints: vec![
                "203.0.113.5:51820".parse().unwrap(),
                "[2001:db8::5]:51820".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn round_trip_and_golden_layout() {
        let line = example().encode(&key());
        assert!(line.starts_with(PREFIX));
        assert_eq!(Invite::decode(&format!("  {line}\n")), Ok(example()));
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&line[PREFIX.len()..])
            .unwrap();
        // version, transport, then the WireGuard key.
        assert_eq!(&bytes[..4], &[1, 1, 7, 7]);
        // The negotiation identity after the two keys and the token.
        let at = 2 + 32 + 32 + 16;
        assert_eq!(&bytes[at..at + 2], &[5, 5]);
        assert_eq!(&bytes[at + 32..at + 36], &[100, 127, 0, 2]);
        // expiry and uses after it.
        let at = at + 36;
        assert_eq!(&bytes[at..at + 8], &1_800_000_000u64.to_be_bytes());
        assert_eq!(&bytes[at + 8..at + 11], &[0, 1, 2]);
        // v4 endpoint: family, address, port.
        assert_eq!(&bytes[at + 11..at + 18], &[4, 203, 0, 113, 5, 0xca, 0x6c]);
        assert_eq!(bytes.len(), HEADER_LEN + 7 + 19 + SIGNATURE_LEN);
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let line = example().encode(&key());
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&line[PREFIX.len()..])
            .unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let text = format!(
                "{PREFIX}{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b)
            );
            assert!(Invite::decode(&text).is_err(), "flipped byte {i} accepted");
        }
    }

    #[test]
    fn unknown_versions_and_transports_ask_for_an_upgrade() {
        let e = Invite::decode("portdistrict-invite2:AAAA").unwrap_err();
        assert_eq!(e, InviteError::UnknownVersion(2));
        assert!(e.to_string().contains("upgrade"));
        let line = example().encode(&key());
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&line[PREFIX.len()..])
            .unwrap();
        bytes[0] = 2;
        let enc = |b: &[u8]| {
            format!(
                "{PREFIX}{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
            )
        };
        assert_eq!(
            Invite::decode(&enc(&bytes)),
            Err(InviteError::UnknownVersion(2))
        );
        bytes[0] = 1;
        bytes[1] = 9;
        let e = Invite::decode(&enc(&bytes)).unwrap_err();
        assert_eq!(e, InviteError::UnknownTransport(9));
        assert!(e.to_string().contains("upgrade"));
    }

    #[test]
    fn damaged_and_foreign_text_is_named() {
        assert_eq!(Invite::decode("hello"), Err(InviteError::NotAnInvite));
        assert!(matches!(
            Invite::decode(&format!("{PREFIX}!!!")),
            Err(InviteError::Base64(_))
        ));
        let line = example().encode(&key());
        let short = &line[..line.len() - 10];
        assert!(matches!(
            Invite::decode(short),
            Err(InviteError::Truncated(_) | InviteError::Base64(_))
        ));
        let mut long = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&line[PREFIX.len()..])
            .unwrap();
        long.extend_from_slice(&[0, 0, 0]);
        let text = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&long)
        );
        assert_eq!(Invite::decode(&text), Err(InviteError::Trailing(3)));
    }

    #[test]
    fn codec_errors_are_named_in_invite_terms() {
        let line = example().encode(&key());
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&line[PREFIX.len()..])
            .unwrap();
        let enc = |b: &[u8]| {
            format!(
                "{PREFIX}{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
            )
        };
        let mut family = bytes.clone();
        family[HEADER_LEN] = 5;
        assert_eq!(
            Invite::decode(&enc(&family)),
            Err(InviteError::Malformed("endpoint family must be 4 or 6"))
        );
        assert_eq!(
            Invite::decode(&enc(&bytes[..HEADER_LEN + 3])),
            Err(InviteError::Truncated("endpoint"))
        );
        assert_eq!(
            Invite::decode(&enc(&bytes[..HEADER_LEN - 1])),
            Err(InviteError::Truncated("endpoint count"))
        );
    }

    #[test]
    fn expiry_is_checked_against_the_given_time() {
        let inv = example();
        assert_eq!(inv.check_expiry(1_799_999_999), Ok(()));
        assert_eq!(
            inv.check_expiry(1_800_000_000),
            Err(InviteError::Expired {
                expires: 1_800_000_000
            })
        );
    }
}
