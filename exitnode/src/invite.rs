//! Exit invites: one line, `portdistrict-invite1:<base64url>`, that a provider hands
//! to a consumer out of band. Versioned, signed by the provider (Ed25519), carrying
//! the provider's endpoints, its WireGuard public key, a token, an expiry, the number
//! of uses, a transport, where its exit channel listens and with which Noise static
//! key ([`crate::channel`]), and optionally the pin of an attested exit: the launch
//! measurement and guest-policy rules its SEV-SNP attestation must show.
//!
//! The consumer asks for its grant over the exit channel (TCP to an endpoint's
//! address at the channel port) before anything on its machine changes; the tunnel
//! comes up with its own WireGuard key only after the provider granted it.
//!
//! Binary layout of version 2 (all integers big-endian), then the signature over
//! everything before it:
//!
//! ```text
//! version u8 (2) | transport u8 (1 = WireGuard over UDP) | wg_key [32] | signer [32]
//! | token [16] | channel Noise key [32] | channel TCP port u16
//! | pin u8 (0 none, 1 present)
//!   [ | measurement [48] | min ABI major u8 | min ABI minor u8 | SMT u8 (0 allowed, 1 forbidden) ]
//! | expires u64 (Unix seconds) | uses u16 | endpoint count u8 (1..=8)
//! | endpoints: family u8 (4 or 6), address [4 or 16], port u16 | signature [64]
//! ```
//!
//! Version 1 (a one-off WireGuard "negotiation identity", X25519 key [32] and
//! address [4], where version 2 has the channel and the pin) is still read, so that
//! a consumer whose saved state holds one keeps its kill switch and tunnel across an
//! upgrade and a reboot; it has no channel ([`Invite::channel`] is `None`), so a new
//! grant needs a new invite.
//!
//! Decoding checks everything it can without the provider's state: label, base64url,
//! version and transport (unknown ones ask for an upgrade), structure, and the
//! signature under the embedded signer key (so a changed byte is caught). Whether the
//! signer is the provider itself, the token known, unused, unrevoked and unexpired is
//! for the provider to decide ([`Invite::check_expiry`] takes the time as an argument).

use portdistrict_control_core::attest::Smt;
use portdistrict_control_core::codec::{BlobError, CodecError, Label, Reader, Writer};
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use std::net::SocketAddr;

/// The label every invite starts with.
pub const PREFIX: &str = LABEL.prefix();
const LABEL: Label = Label::new("portdistrict-invite1:");
/// The binary version this code writes (it also reads version 1).
pub const VERSION: u8 = 2;
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
    /// Where and how to reach the provider's exit channel (`None`: a version-1
    /// invite, which has none).
    pub channel: Option<Channel>,
    /// What the provider's attestation must show, if the invite pins it.
    pub pin: Option<Pin>,
    /// When it stops being valid, Unix seconds.
    pub expires: u64,
    /// How many consumers may use it.
    pub uses: u16,
    /// Where the provider listens.
    pub endpoints: Vec<SocketAddr>,
}

/// The provider's exit channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    /// Its Noise static public key.
    pub noise_key: [u8; 32],
    /// Its TCP port, on each endpoint's address.
    pub port: u16,
}

/// An attested exit's pin: what its SEV-SNP attestation must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    /// The launch measurement.
    pub measurement: [u8; 48],
    /// The lowest guest ABI (major, minor) its policy may allow.
    pub min_abi: (u8, u8),
    /// Whether its policy may allow SMT.
    pub smt: Smt,
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
    /// The invite as one line (version 2), signed with `key` (whose public key must
    /// be [`Invite::signer`]; it is written from `key`). An invite without a channel
    /// is written with port 0, which no decoder accepts: only version-1 invites lack
    /// one, and they are never written again.
    pub fn encode(&self, key: &Ed25519KeyPair) -> String {
        let eps = &self.endpoints[..self.endpoints.len().min(MAX_ENDPOINTS)];
        let mut body = Writer::new();
        let channel = self.channel.unwrap_or(Channel {
            noise_key: [0; 32],
            port: 0,
        });
        body.u8(VERSION)
            .u8(self.transport.code())
            .bytes(&self.wg_key)
            .bytes(key.public_key().as_ref())
            .bytes(&self.token)
            .bytes(&channel.noise_key)
            .u16(channel.port);
        match &self.pin {
            None => {
                body.u8(0);
            }
            Some(p) => {
                body.u8(1)
                    .bytes(&p.measurement)
                    .u8(p.min_abi.0)
                    .u8(p.min_abi.1)
                    .u8(match p.smt {
                        Smt::Any => 0,
                        Smt::Forbidden => 1,
                    });
            }
        }
        body.u64(self.expires).u16(self.uses).u8(eps.len() as u8);
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
        if version != 1 && version != VERSION {
            return Err(InviteError::UnknownVersion(version));
        }
        let transport = match r.u8("transport")? {
            1 => Transport::WireGuardUdp,
            t => return Err(InviteError::UnknownTransport(t)),
        };
        let wg_key = r.array("WireGuard key")?;
        let signer: [u8; 32] = r.array("signer key")?;
        let token = r.array("token")?;
        let (channel, pin) = if version == 1 {
            // The one-off negotiation identity, no longer used.
            r.array::<36>("negotiation identity")?;
            (None, None)
        } else {
            let noise_key = r.array("channel key")?;
            let port = r.u16("channel port")?;
            if port == 0 {
                return Err(InviteError::Malformed("channel port 0"));
            }
            let pin = match r.u8("pin flag")? {
                0 => None,
                1 => Some(Pin {
                    measurement: r.array("pinned measurement")?,
                    min_abi: (r.u8("pinned ABI")?, r.u8("pinned ABI")?),
                    smt: match r.u8("pinned SMT rule")? {
                        0 => Smt::Any,
                        1 => Smt::Forbidden,
                        _ => return Err(InviteError::Malformed("SMT rule must be 0 or 1")),
                    },
                }),
                _ => return Err(InviteError::Malformed("pin flag must be 0 or 1")),
            };
            (Some(Channel { noise_key, port }), pin)
        };
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
            channel,
            pin,
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

    const HEADER_LEN: usize = 1 + 1 + 32 + 32 + 16 + 32 + 2 + 1 + 8 + 2 + 1;

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
            channel: Some(Channel {
                noise_key: [5; 32],
                port: 51820,
            }),
            pin: None,
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
        assert_eq!(&bytes[..4], &[2, 1, 7, 7]);
        // The channel after the two keys and the token, then "no pin".
        let at = 2 + 32 + 32 + 16;
        assert_eq!(&bytes[at..at + 2], &[5, 5]);
        assert_eq!(&bytes[at + 32..at + 35], &[0xca, 0x6c, 0]);
        // expiry and uses after it.
        let at = at + 35;
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
        // The version byte after 2.
        assert!(e.to_string().contains("upgrade"));
        let line = example().encode(&key());
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&line[PREFIX.len()..])
            .unwrap();
        bytes[0] = 3;
        let enc = |b: &[u8]| {
            format!(
                "{PREFIX}{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
            )
        };
        assert_eq!(
            Invite::decode(&enc(&bytes)),
            Err(InviteError::UnknownVersion(3))
        );
        bytes[0] = 2;
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
    fn a_pin_round_trips_and_is_signed() {
        let mut inv = example();
        inv.pin = Some(Pin {
            measurement: [0x3e; 48],
            min_abi: (1, 51),
            smt: Smt::Forbidden,
        });
        let line = inv.encode(&key());
        assert_eq!(Invite::decode(&line), Ok(inv.clone()));
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&line[PREFIX.len()..])
            .unwrap();
        let at = 2 + 32 + 32 + 16 + 32 + 2;
        assert_eq!(bytes[at], 1);
        assert_eq!(&bytes[at + 1..at + 49], &[0x3e; 48]);
        assert_eq!(&bytes[at + 49..at + 52], &[1, 51, 1]);
        assert_eq!(bytes.len(), HEADER_LEN + 51 + 7 + 19 + SIGNATURE_LEN);
    }

    #[test]
    fn a_version_1_invite_is_read_without_a_channel() {
        // As version 1 wrote it: the negotiation identity where the channel is now.
        let k = key();
        let mut body = Writer::new();
        body.u8(1)
            .u8(1)
            .bytes(&[7; 32])
            .bytes(k.public_key().as_ref())
            .bytes(&[9; 16])
            .bytes(&[5; 32])
            .bytes(&[100, 127, 0, 2])
            .u64(1_800_000_000)
            .u16(1)
            .u8(1);
        body.socket_addr("203.0.113.5:51820".parse().unwrap());
        let sig = k.sign(body.as_bytes());
        body.bytes(sig.as_ref());
        let inv = Invite::decode(&LABEL.encode(body.as_bytes())).unwrap();
        assert_eq!(inv.channel, None);
        assert_eq!(inv.pin, None);
        assert_eq!(inv.wg_key, [7; 32]);
        assert_eq!(inv.endpoints, vec!["203.0.113.5:51820".parse().unwrap()]);
    }

    #[test]
    fn channel_port_0_and_bad_pin_fields_are_named() {
        let enc = |inv: &Invite, patch: &dyn Fn(&mut Vec<u8>)| {
            let line = inv.encode(&key());
            let mut b = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&line[PREFIX.len()..])
                .unwrap();
            patch(&mut b);
            // Re-sign, so that only the field is wrong.
            let n = b.len() - SIGNATURE_LEN;
            b.truncate(n);
            let sig = key().sign(&b);
            b.extend_from_slice(sig.as_ref());
            LABEL.encode(&b)
        };
        let port = 2 + 32 + 32 + 16 + 32;
        let text = enc(&example(), &|b| b[port..port + 2].copy_from_slice(&[0, 0]));
        assert_eq!(
            Invite::decode(&text),
            Err(InviteError::Malformed("channel port 0"))
        );
        let text = enc(&example(), &|b| b[port + 2] = 2);
        assert_eq!(
            Invite::decode(&text),
            Err(InviteError::Malformed("pin flag must be 0 or 1"))
        );
        let mut pinned = example();
        pinned.pin = Some(Pin {
            measurement: [1; 48],
            min_abi: (0, 0),
            smt: Smt::Any,
        });
        let text = enc(&pinned, &|b| b[port + 2 + 51] = 7);
        assert_eq!(
            Invite::decode(&text),
            Err(InviteError::Malformed("SMT rule must be 0 or 1"))
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
