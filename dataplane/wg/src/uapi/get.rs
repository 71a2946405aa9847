//! Reading the answer to `get=1` back into a [`DeviceSnapshot`]: what a client of
//! the socket (portdistrictd, `exit serve`) does with [`super::format_get`]'s text.

use std::net::SocketAddr;
use std::time::Duration;

use super::parse::{
    parse_allowed_ip, parse_decimal, parse_endpoint, parse_u16, parse_u32, quote, HEX_KEY,
    U16_RANGE,
};
use crate::config::{DeviceSnapshot, PeerSnapshot};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};

const U64_RANGE: &str = "expected a decimal number from 0 to 18446744073709551615";

/// Why the text of a `get=1` answer could not be read. Lines are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GetError {
    /// The answer ends with a non-zero `errno=`: the server refused the `get`.
    #[error("the server answered errno={0}")]
    Errno(i32),
    /// The answer has no `errno=` line before its end (it was cut short).
    #[error("the answer ends without an errno= line")]
    MissingErrno,
    /// A line has no `=`.
    #[error("line {line}: {text:?} is not of the form key=value")]
    MissingEquals {
        /// Line number.
        line: usize,
        /// The line (shortened if long).
        text: String,
    },
    /// A key that a `get` answer does not have, or a peer key before the first
    /// `public_key=`, or a device key after it.
    #[error("line {line}: unexpected key {key:?}")]
    UnexpectedKey {
        /// Line number.
        line: usize,
        /// The key (shortened if long).
        key: String,
    },
    /// A known key has a value that does not parse.
    #[error("line {line}: invalid {key} value {value:?}: {reason}")]
    InvalidValue {
        /// Line number.
        line: usize,
        /// The key.
        key: &'static str,
        /// The value (shortened if long; `<redacted>` for secret keys).
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
}

/// Parses the answer to `get=1`: device lines, then one block per peer starting
/// with `public_key=`, ended by `errno=0` (a blank line and anything after the
/// `errno=` line are ignored). The inverse of [`super::format_get`]: a zero
/// handshake time is `None`, a zero private key is `None`. Endpoints may carry only
/// numeric IPv6 scope ids.
pub fn parse_get(text: &str) -> Result<DeviceSnapshot, GetError> {
    let mut snap = DeviceSnapshot::default();
    // The handshake time of the current peer, in parts until the peer ends.
    let mut handshake = (0u64, 0u32);
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let text = raw.strip_suffix('\r').unwrap_or(raw);
        if text.is_empty() {
            break;
        }
        let Some((key, value)) = text.split_once('=') else {
            return Err(GetError::MissingEquals {
                line,
                text: quote(text),
            });
        };
        match key {
            "errno" => {
                finish_peer(&mut snap, handshake);
                return match parse_decimal_i32(value) {
                    Some(0) => Ok(snap),
                    Some(e) => Err(GetError::Errno(e)),
                    None => Err(invalid(line, "errno", value, "expected a decimal number")),
                };
            }
            "public_key" => {
                finish_peer(&mut snap, handshake);
                handshake = (0, 0);
                let key = PublicKey::from_hex(value)
                    .map_err(|_| invalid(line, "public_key", value, HEX_KEY))?;
                snap.peers.push(PeerSnapshot {
                    public_key: key,
                    preshared_key: PresharedKey::default(),
                    endpoint: None,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive_interval: 0,
                    allowed_ips: Vec::new(),
                });
            }
            _ => match snap.peers.last_mut() {
                Some(peer) => peer_line(peer, &mut handshake, line, key, value)?,
                None => device_line(&mut snap, line, key, value)?,
            },
        }
    }
    Err(GetError::MissingErrno)
}

fn device_line(
    snap: &mut DeviceSnapshot,
    line: usize,
    key: &str,
    value: &str,
) -> Result<(), GetError> {
    match key {
        "private_key" => {
            let k = PrivateKey::from_hex(value).map_err(|_| GetError::InvalidValue {
                line,
                key: "private_key",
                value: "<redacted>".to_owned(),
                reason: HEX_KEY,
            })?;
            snap.private_key = (!k.is_zero()).then_some(k);
        }
        "listen_port" => {
            snap.listen_port =
                parse_u16(value).map_err(|r| invalid(line, "listen_port", value, r))?;
        }
        "fwmark" => {
            snap.fwmark = parse_u32(value).map_err(|r| invalid(line, "fwmark", value, r))?;
        }
        _ => return Err(unexpected(line, key)),
    }
    Ok(())
}

fn peer_line(
    peer: &mut PeerSnapshot,
    handshake: &mut (u64, u32),
    line: usize,
    key: &str,
    value: &str,
) -> Result<(), GetError> {
    match key {
        "preshared_key" => {
            peer.preshared_key =
                PresharedKey::from_hex(value).map_err(|_| GetError::InvalidValue {
                    line,
                    key: "preshared_key",
                    value: "<redacted>".to_owned(),
                    reason: HEX_KEY,
                })?;
        }
        "protocol_version" => {
            if value != "1" {
                return Err(invalid(
                    line,
                    "protocol_version",
                    value,
                    "the only protocol version is 1",
                ));
            }
        }
        "endpoint" => {
            let e: SocketAddr = parse_endpoint(value, &|_| None)
                .map_err(|r| invalid(line, "endpoint", value, r))?;
            peer.endpoint = Some(e);
        }
        "last_handshake_time_sec" => {
            handshake.0 = parse_decimal(value, U64_RANGE)
                .map_err(|r| invalid(line, "last_handshake_time_sec", value, r))?;
        }
        "last_handshake_time_nsec" => {
            handshake.1 = parse_decimal::<u32>(value, "expected nanoseconds below 1000000000")
                .ok()
                .filter(|n| *n < 1_000_000_000)
                .ok_or_else(|| {
                    invalid(
                        line,
                        "last_handshake_time_nsec",
                        value,
                        "expected nanoseconds below 1000000000",
                    )
                })?;
        }
        "tx_bytes" => {
            peer.tx_bytes =
                parse_decimal(value, U64_RANGE).map_err(|r| invalid(line, "tx_bytes", value, r))?;
        }
        "rx_bytes" => {
            peer.rx_bytes =
                parse_decimal(value, U64_RANGE).map_err(|r| invalid(line, "rx_bytes", value, r))?;
        }
        "persistent_keepalive_interval" => {
            peer.persistent_keepalive_interval = parse_decimal(value, U16_RANGE)
                .map_err(|r| invalid(line, "persistent_keepalive_interval", value, r))?;
        }
        "allowed_ip" => {
            let ip = parse_allowed_ip(value)
                .ok()
                .filter(|ip| !ip.remove)
                .ok_or_else(|| invalid(line, "allowed_ip", value, "expected ADDRESS/CIDR"))?;
            peer.allowed_ips.push((ip.addr, ip.cidr));
        }
        _ => return Err(unexpected(line, key)),
    }
    Ok(())
}

/// Sets the last peer's handshake time from its two lines, once the peer ended.
fn finish_peer(snap: &mut DeviceSnapshot, (secs, nsecs): (u64, u32)) {
    if let Some(peer) = snap.peers.last_mut() {
        peer.last_handshake = (secs != 0 || nsecs != 0).then(|| Duration::new(secs, nsecs));
    }
}

/// An optionally negative decimal (errno values are negative).
fn parse_decimal_i32(value: &str) -> Option<i32> {
    let (neg, digits) = match value.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, value),
    };
    let n: i32 = parse_decimal(digits, "").ok()?;
    Some(if neg { -n } else { n })
}

fn invalid(line: usize, key: &'static str, value: &str, reason: &'static str) -> GetError {
    GetError::InvalidValue {
        line,
        key,
        value: quote(value),
        reason,
    }
}

fn unexpected(line: usize, key: &str) -> GetError {
    GetError::UnexpectedKey {
        line,
        key: quote(key),
    }
}
