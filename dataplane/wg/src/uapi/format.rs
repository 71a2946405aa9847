//! Formatting of UAPI answers: the `get=1` dump in wireguard-go's order and
//! the `errno=N` status that ends every answer.

use std::fmt::{Display, Write as _};

use crate::config::{ConfigChange, DeviceSnapshot, PeerChange, PeerSnapshot};

/// Bytes reserved per peer and per allowed IP, so a large dump grows its
/// buffer once instead of many times.
const PEER_BYTES: usize = 420;
const ALLOWED_IP_BYTES: usize = 56;

/// Appends the status line that ends an answer: `errno=N` and a blank line.
/// `errno` is 0 on success, otherwise negative ([`super::UapiError::errno`]).
pub fn format_errno(out: &mut String, errno: i32) {
    push_line(out, "errno", errno);
    out.push('\n');
}

/// Appends a `set=1` request carrying `req` (what a client such as `wg set` sends),
/// ending with the blank line; [`super::parse_request`] reads it back as `req`.
pub fn format_set(out: &mut String, req: &ConfigChange) {
    out.push_str("set=1\n");
    match &req.private_key {
        Some(Some(key)) => push_key(out, "private_key", key.as_bytes()),
        Some(None) => push_key(out, "private_key", &[0; 32]),
        None => {}
    }
    if let Some(p) = req.listen_port {
        push_line(out, "listen_port", p);
    }
    if let Some(m) = req.fwmark {
        push_line(out, "fwmark", m);
    }
    if req.replace_peers {
        out.push_str("replace_peers=true\n");
    }
    for peer in &req.peers {
        format_peer_change(out, peer);
    }
    out.push('\n');
}

fn format_peer_change(out: &mut String, peer: &PeerChange) {
    push_key(out, "public_key", peer.public_key.as_bytes());
    if peer.remove {
        out.push_str("remove=true\n");
    }
    if peer.update_only {
        out.push_str("update_only=true\n");
    }
    if let Some(psk) = &peer.preshared_key {
        push_key(out, "preshared_key", &psk.0);
    }
    if let Some(e) = peer.endpoint {
        push_line(out, "endpoint", e);
    }
    if let Some(k) = peer.persistent_keepalive_interval {
        push_line(out, "persistent_keepalive_interval", k);
    }
    if let Some(v) = peer.protocol_version {
        push_line(out, "protocol_version", v);
    }
    if peer.replace_allowed_ips {
        out.push_str("replace_allowed_ips=true\n");
    }
    for ip in &peer.allowed_ips {
        let sign = if ip.remove { "-" } else { "" };
        push_line(
            out,
            "allowed_ip",
            format_args!("{sign}{}/{}", ip.addr, ip.cidr),
        );
    }
}

/// Appends the whole answer to `get=1`, including the final `errno=0` and
/// blank line.
///
/// Device lines come first (`private_key` if set, `listen_port` if non-zero,
/// `fwmark` if non-zero), then each peer: `public_key`, `preshared_key`,
/// `protocol_version`, `endpoint` if known, the last handshake time,
/// `tx_bytes`, `rx_bytes`, `persistent_keepalive_interval` and one
/// `allowed_ip` per prefix.
pub fn format_get(out: &mut String, snap: &DeviceSnapshot) {
    let ips: usize = snap.peers.iter().map(|p| p.allowed_ips.len()).sum();
    out.reserve(200 + snap.peers.len() * PEER_BYTES + ips * ALLOWED_IP_BYTES);
    if let Some(key) = snap.private_key.as_ref().filter(|k| !k.is_zero()) {
        push_key(out, "private_key", key.as_bytes());
    }
    if snap.listen_port != 0 {
        push_line(out, "listen_port", snap.listen_port);
    }
    if snap.fwmark != 0 {
        push_line(out, "fwmark", snap.fwmark);
    }
    for peer in &snap.peers {
        format_peer(out, peer);
    }
    format_errno(out, 0);
}

fn format_peer(out: &mut String, peer: &PeerSnapshot) {
    push_key(out, "public_key", peer.public_key.as_bytes());
    push_key(out, "preshared_key", &peer.preshared_key.0);
    out.push_str("protocol_version=1\n");
    if let Some(endpoint) = peer.endpoint {
        push_line(out, "endpoint", endpoint);
    }
    let (secs, nsecs) = peer
        .last_handshake
        .map_or((0, 0), |t| (t.as_secs(), t.subsec_nanos()));
    push_line(out, "last_handshake_time_sec", secs);
    push_line(out, "last_handshake_time_nsec", nsecs);
    push_line(out, "tx_bytes", peer.tx_bytes);
    push_line(out, "rx_bytes", peer.rx_bytes);
    push_line(
        out,
        "persistent_keepalive_interval",
        peer.persistent_keepalive_interval,
    );
    for (addr, cidr) in &peer.allowed_ips {
        // Writing into a String cannot fail.
        let _ = writeln!(out, "allowed_ip={addr}/{cidr}");
    }
}

fn push_line(out: &mut String, key: &str, value: impl Display) {
    // Writing into a String cannot fail.
    let _ = writeln!(out, "{key}={value}");
}

/// `key=` and 64 lower-case hex digits, written straight into `out` so that
/// secrets are not copied into temporary strings.
fn push_key(out: &mut String, key: &str, bytes: &[u8; 32]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str(key);
    out.push('=');
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out.push('\n');
}
