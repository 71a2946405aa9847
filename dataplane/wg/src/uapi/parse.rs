//! Parsing of UAPI requests, line by line as wireguard-go's `IpcSetOperation`
//! reads them, but into a [`ConfigChange`] value instead of onto a device.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use zeroize::Zeroize;

use super::{Request, UapiError};
use crate::config::{AllowedIpChange, ConfigChange, PeerChange};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};

/// Longest key or value quoted back in an error message, in bytes.
const QUOTE_MAX: usize = 64;
pub(super) const HEX_KEY: &str = "expected 64 hexadecimal digits";
const ONLY_TRUE: &str = "the only accepted value is \"true\"";
pub(super) const U16_RANGE: &str = "expected a decimal number from 0 to 65535";
pub(super) const U32_RANGE: &str = "expected a decimal number from 0 to 4294967295";

/// A resolver of IPv6 scope names (`%eth0`) to interface indices.
type ScopeResolver<'a> = &'a dyn Fn(&str) -> Option<u32>;

/// Length of the first complete request at the start of `buf`, or `None` if
/// more bytes are needed (at end of input, pass what there is to
/// [`parse_request`]: a `set` may end at EOF).
///
/// A request is the operation line plus, for `get=1`, the one byte after it
/// (which must be the blank line) or, for `set=1`, every line up to and
/// including the first empty one (`\n` or `\r\n`). An unknown operation line
/// is a request by itself, which [`parse_request`] rejects.
pub fn request_len(buf: &[u8]) -> Option<usize> {
    let op_end = buf.iter().position(|&b| b == b'\n')? + 1;
    match &buf[..op_end] {
        b"get=1\n" => (buf.len() > op_end).then_some(op_end + 1),
        b"set=1\n" => {
            let mut start = op_end;
            while let Some(n) = buf[start..].iter().position(|&b| b == b'\n') {
                let line = &buf[start..start + n];
                if line.is_empty() || line == b"\r" {
                    return Some(start + n + 1);
                }
                start += n + 1;
            }
            None
        }
        _ => Some(op_end),
    }
}

/// Parses one request: `text` is everything the client sent up to and
/// including the terminating blank line (or up to EOF); the first line must be
/// `get=1` or `set=1`. IPv6 endpoints may carry only numeric scope ids
/// (`[fe80::1%3]:51820`); see [`parse_request_with`] for names.
pub fn parse_request(text: &str) -> Result<Request, UapiError> {
    parse_request_with(text, &|_| None)
}

/// [`parse_request`], resolving IPv6 scope names in endpoints
/// (`[fe80::1%eth0]:51820`, which `wg` sends for link-local peers) with
/// `scope_id` (the caller's `if_nametoindex`). Numeric scopes never reach it.
pub fn parse_request_with(
    text: &str,
    scope_id: &dyn Fn(&str) -> Option<u32>,
) -> Result<Request, UapiError> {
    let Some((op, body)) = text.split_once('\n') else {
        return Err(UapiError::UnknownOperation(quote(text)));
    };
    match op {
        "get=1" => match body.split_once('\n') {
            Some(("", _)) => Ok(Request::Get),
            Some((line, _)) => Err(UapiError::GetNotTerminated(quote(line))),
            None => Err(UapiError::GetNotTerminated(quote(body))),
        },
        "set=1" => parse_set(body, scope_id).map(Request::Set),
        _ => Err(UapiError::UnknownOperation(quote(op))),
    }
}

/// Parses the lines after `set=1` up to the first empty line or the end.
fn parse_set(body: &str, scope_id: ScopeResolver<'_>) -> Result<ConfigChange, UapiError> {
    let mut req = ConfigChange::default();
    for (index, raw) in body.split('\n').enumerate() {
        let line = index + 2;
        let text = raw.strip_suffix('\r').unwrap_or(raw);
        if text.is_empty() {
            break;
        }
        let Some((key, value)) = text.split_once('=') else {
            return Err(UapiError::MissingEquals {
                line,
                text: quote(text),
            });
        };
        if key == "public_key" {
            let key = PublicKey::from_hex(value)
                .map_err(|_| invalid(line, "public_key", value, HEX_KEY))?;
            req.peers.push(PeerChange::new(key));
        } else if let Some(peer) = req.peers.last_mut() {
            peer_line(peer, line, key, value, scope_id)?;
        } else {
            device_line(&mut req, line, key, value)?;
        }
    }
    Ok(req)
}

/// Applies one device key (before the first `public_key=`) to `req`.
fn device_line(
    req: &mut ConfigChange,
    line: usize,
    key: &str,
    value: &str,
) -> Result<(), UapiError> {
    match key {
        "private_key" => {
            let key =
                parse_private_key(value).map_err(|r| invalid_secret(line, "private_key", r))?;
            req.private_key = Some(key);
        }
        "listen_port" => {
            let port = parse_u16(value).map_err(|r| invalid(line, "listen_port", value, r))?;
            req.listen_port = Some(port);
        }
        "fwmark" => {
            let mark = parse_u32(value).map_err(|r| invalid(line, "fwmark", value, r))?;
            req.fwmark = Some(mark);
        }
        "replace_peers" => {
            expect_true(value).map_err(|r| invalid(line, "replace_peers", value, r))?;
            req.replace_peers = true;
        }
        _ => {
            return Err(UapiError::UnknownDeviceKey {
                line,
                key: quote(key),
            })
        }
    }
    Ok(())
}

/// Applies one peer key to the peer of the last `public_key=` line.
fn peer_line(
    peer: &mut PeerChange,
    line: usize,
    key: &str,
    value: &str,
    scope_id: ScopeResolver<'_>,
) -> Result<(), UapiError> {
    match key {
        "remove" => {
            expect_true(value).map_err(|r| invalid(line, "remove", value, r))?;
            peer.remove = true;
        }
        "update_only" => {
            expect_true(value).map_err(|r| invalid(line, "update_only", value, r))?;
            peer.update_only = true;
        }
        "preshared_key" => {
            let psk = PresharedKey::from_hex(value)
                .map_err(|_| invalid_secret(line, "preshared_key", HEX_KEY))?;
            peer.preshared_key = Some(psk);
        }
        "endpoint" => {
            let endpoint =
                parse_endpoint(value, scope_id).map_err(|r| invalid(line, "endpoint", value, r))?;
            peer.endpoint = Some(endpoint);
        }
        "persistent_keepalive_interval" => {
            let secs = parse_u16(value)
                .map_err(|r| invalid(line, "persistent_keepalive_interval", value, r))?;
            peer.persistent_keepalive_interval = Some(secs);
        }
        "replace_allowed_ips" => {
            expect_true(value).map_err(|r| invalid(line, "replace_allowed_ips", value, r))?;
            peer.replace_allowed_ips = true;
            peer.allowed_ips.clear();
        }
        "allowed_ip" => {
            let change =
                parse_allowed_ip(value).map_err(|r| invalid(line, "allowed_ip", value, r))?;
            peer.allowed_ips.push(change);
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
            peer.protocol_version = Some(1);
        }
        _ => {
            return Err(UapiError::UnknownPeerKey {
                line,
                key: quote(key),
            })
        }
    }
    Ok(())
}

fn invalid(line: usize, key: &'static str, value: &str, reason: &'static str) -> UapiError {
    UapiError::InvalidValue {
        line,
        key,
        value: quote(value),
        reason,
    }
}

/// Like [`invalid`], without echoing the (possibly nearly valid) secret.
fn invalid_secret(line: usize, key: &'static str, reason: &'static str) -> UapiError {
    UapiError::InvalidValue {
        line,
        key,
        value: "<redacted>".to_owned(),
        reason,
    }
}

/// `s`, cut to at most [`QUOTE_MAX`] bytes (on a character boundary) for messages.
pub(super) fn quote(s: &str) -> String {
    if s.len() <= QUOTE_MAX {
        return s.to_owned();
    }
    let mut end = QUOTE_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn expect_true(value: &str) -> Result<(), &'static str> {
    if value == "true" {
        Ok(())
    } else {
        Err(ONLY_TRUE)
    }
}

/// Only ASCII digits, at least one (Go's `strconv.ParseUint(s, 10, n)`: no
/// sign, no spaces, leading zeros allowed).
fn is_decimal(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())
}

pub(super) fn parse_u16(value: &str) -> Result<u16, &'static str> {
    parse_decimal(value, U16_RANGE)
}

pub(super) fn parse_u32(value: &str) -> Result<u32, &'static str> {
    parse_decimal(value, U32_RANGE)
}

pub(super) fn parse_decimal<T: std::str::FromStr>(
    value: &str,
    reason: &'static str,
) -> Result<T, &'static str> {
    if !is_decimal(value) {
        return Err(reason);
    }
    value.parse().map_err(|_| reason)
}

/// A private key in hex: `None` for all zeros, otherwise clamped as X25519
/// clamps it (wireguard-go's `FromMaybeZeroHex`).
fn parse_private_key(value: &str) -> Result<Option<PrivateKey>, &'static str> {
    let key = PrivateKey::from_hex(value).map_err(|_| HEX_KEY)?;
    if key.is_zero() {
        return Ok(None);
    }
    let mut bytes = *key.as_bytes();
    bytes[0] &= 248;
    bytes[31] = (bytes[31] & 127) | 64;
    let clamped = PrivateKey::from_bytes(bytes);
    bytes.zeroize();
    Ok(Some(clamped))
}

/// `1.2.3.4:51820` or `[v6]:51820`, with an optional `%scope` inside the
/// brackets, like Go's `netip.ParseAddrPort`.
pub(super) fn parse_endpoint(
    value: &str,
    scope_id: ScopeResolver<'_>,
) -> Result<SocketAddr, &'static str> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or("expected ADDRESS:PORT or [ADDRESS]:PORT")?;
    if host.is_empty() {
        return Err("missing address before the port");
    }
    let port = parse_u16(port).map_err(|_| "port must be a decimal number from 0 to 65535")?;
    if let Some(bracketed) = host.strip_prefix('[') {
        let inner = bracketed
            .strip_suffix(']')
            .ok_or("missing ']' after the IPv6 address")?;
        return parse_v6_endpoint(inner, port, scope_id);
    }
    if host.contains(':') {
        return Err("IPv6 addresses must be in square brackets");
    }
    let ip: Ipv4Addr = host.parse().map_err(|_| "invalid IPv4 address")?;
    Ok(SocketAddr::new(IpAddr::V4(ip), port))
}

fn parse_v6_endpoint(
    inner: &str,
    port: u16,
    scope_id: ScopeResolver<'_>,
) -> Result<SocketAddr, &'static str> {
    let (addr, scope) = match inner.split_once('%') {
        Some((addr, scope)) => (addr, Some(scope)),
        None => (inner, None),
    };
    let ip: Ipv6Addr = addr
        .parse()
        .map_err(|_| "invalid IPv6 address (square brackets are only for IPv6)")?;
    let scope = match scope {
        None => 0,
        Some("") => return Err("empty IPv6 scope after '%'"),
        Some(s) if is_decimal(s) => s.parse().map_err(|_| "IPv6 scope id out of range")?,
        Some(name) => scope_id(name).ok_or("unknown interface in IPv6 scope")?,
    };
    Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
}

/// `[-]ADDRESS/CIDR`, like Go's `netip.ParsePrefix` after wireguard-go strips
/// the removal `-`: no zone, no leading zeros or sign in the length.
pub(super) fn parse_allowed_ip(value: &str) -> Result<AllowedIpChange, &'static str> {
    let (remove, prefix) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (addr, bits) = prefix.rsplit_once('/').ok_or("expected ADDRESS/CIDR")?;
    if addr.contains('%') {
        return Err("an IPv6 zone is not allowed in a prefix");
    }
    let addr: IpAddr = addr.parse().map_err(|_| "invalid IP address before '/'")?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let leading_zero = bits.len() > 1 && bits.starts_with('0');
    let cidr = match bits.parse::<u8>() {
        Ok(cidr) if is_decimal(bits) && !leading_zero && cidr <= max => cidr,
        _ if addr.is_ipv4() => return Err("prefix length must be 0 to 32 without leading zeros"),
        _ => return Err("prefix length must be 0 to 128 without leading zeros"),
    };
    Ok(AllowedIpChange { addr, cidr, remove })
}
