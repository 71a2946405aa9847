//! `portdistrict netcheck [--facilitator HOST:PORT:KEY] [--json]`: what this
//! machine's network offers portdistrict.
//!
//! - **addresses**: the global IPv4 and IPv6 addresses on its interfaces, which
//!   portdistrictd publishes as endpoints (behind a NAT, others see the NAT's);
//! - **facilitator** (the one given, else `facilitator` in portdistrictd's
//!   configuration file): a WireGuard handshake with it from a fresh key on an
//!   ephemeral UDP port (the key is forgotten; the facilitator drops it within 30 s),
//!   with its round trip: an answer proves UDP both ways and the right public key;
//! - **dataplane**: `portdistrict-dataplane --check --json`: io_uring, TUN and UDP
//!   offloads, XDP, AVX-512 crypto.
//!
//! Nothing on the machine changes.

use crate::Dirs;
use anyhow::Context as _;
use portdistrict_wg::{handshake, wire, PresharedKey, PrivateKey, PublicKey};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Handshake attempts with the facilitator, each waiting this long.
const TRIES: u32 = 3;
const WAIT: Duration = Duration::from_secs(1);

/// `netcheck`: the report, as text or JSON.
pub fn netcheck(_dirs: &Dirs, facilitator: Option<&str>, json: bool) -> anyhow::Result<String> {
    let addresses: Vec<String> = crate::daemon::detect_addresses("")
        .into_iter()
        .map(|a| a.to_string())
        .collect();
    let configured = facilitator.map(str::to_owned).or_else(|| {
        crate::daemon::configured(
            std::path::Path::new(crate::daemon::DEFAULT_CONFIG),
            "facilitator",
        )
    });
    let fac = match &configured {
        None => json!({"configured": false}),
        Some(spec) => {
            let (addr, key) = crate::facilitator::parse_facilitator(spec)?;
            match handshake_rtt(addr, &key) {
                Ok(Some(rtt)) => json!({"configured": true, "address": addr.to_string(),
                    "reachable": true, "rtt_ms": rtt.as_secs_f64() * 1000.0}),
                Ok(None) => json!({"configured": true, "address": addr.to_string(),
                    "reachable": false, "error": format!("no handshake answer in {TRIES} tries of {}s: UDP to {addr} blocked, the facilitator down, or another public key", WAIT.as_secs())}),
                Err(e) => json!({"configured": true, "address": addr.to_string(),
                    "reachable": false, "error": format!("{e:#}")}),
            }
        }
    };
    let dataplane = dataplane_check();
    let v = json!({"addresses": addresses, "facilitator": fac, "dataplane": dataplane});
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    Ok(text(&v))
}

/// The human form of the report.
fn text(v: &Value) -> String {
    let mut s = String::new();
    let addrs: Vec<&str> = v["addresses"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "addresses:     {}",
        if addrs.is_empty() {
            "no global address (only a NAT's, if any, can be reached)".to_owned()
        } else {
            addrs.join(", ")
        }
    );
    let f = &v["facilitator"];
    let _ = writeln!(
        s,
        "facilitator:   {}",
        if f["configured"] != true {
            "none configured (--facilitator HOST:PORT:KEY, or `facilitator` in portdistrictd.toml)"
                .to_owned()
        } else if f["reachable"] == true {
            format!(
                "{} answers a WireGuard handshake in {:.1} ms",
                f["address"].as_str().unwrap_or_default(),
                f["rtt_ms"].as_f64().unwrap_or_default()
            )
        } else {
            format!(
                "{} not reachable: {}",
                f["address"].as_str().unwrap_or_default(),
                f["error"].as_str().unwrap_or_default()
            )
        }
    );
    match v["dataplane"].as_object() {
        Some(d) => {
            for (name, c) in d {
                let _ = writeln!(
                    s,
                    "{:<14} {}: {}",
                    format!("{name}:"),
                    if c["ok"] == true { "yes" } else { "no" },
                    c["detail"].as_str().unwrap_or_default()
                );
            }
        }
        None => {
            let _ = writeln!(
                s,
                "dataplane:     {}",
                v["dataplane"]["error"].as_str().unwrap_or("unknown")
            );
        }
    }
    s
}

/// `portdistrict-dataplane --check --json`, or why it could not run.
fn dataplane_check() -> Value {
    let bin = crate::serve::dataplane_binary();
    match std::process::Command::new(&bin)
        .args(["--check", "--json"])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or_else(
            |e| json!({"error": format!("{}: unreadable answer: {e}", bin.display())}),
        ),
        Ok(o) => {
            json!({"error": format!("{} --check: {}", bin.display(), String::from_utf8_lossy(&o.stderr).trim())})
        }
        Err(e) => json!({"error": format!("running {}: {e}", bin.display())}),
    }
}

/// A WireGuard handshake with `remote` at `addr` from a fresh key: the round trip of
/// the first valid response, `None` when none came.
fn handshake_rtt(addr: SocketAddr, remote: &PublicKey) -> anyhow::Result<Option<Duration>> {
    use rand_core::RngCore as _;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind).context("a UDP socket")?;
    let local = handshake::StaticIdentity::new(PrivateKey::generate(&mut rand_core::OsRng));
    let ss = local
        .static_static(remote)
        .context("the facilitator's public key is not a usable X25519 key")?;
    let mut cookies = portdistrict_wg::cookie::CookieGenerator::new(remote);
    let mut buf = [0u8; 256];
    for _ in 0..TRIES {
        let index = rand_core::OsRng.next_u32();
        let mut ephemeral = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut ephemeral);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut msg = [0u8; wire::INITIATION_LEN];
        let state = handshake::create_initiation(
            &local,
            remote,
            &ss,
            index,
            ephemeral,
            portdistrict_wg::crypto::tai64n(now.as_secs(), now.subsec_nanos()),
            &mut wire::Initiation::new_unchecked(&mut msg[..]),
        )
        .map_err(|e| anyhow::anyhow!("building a handshake initiation: {e:?}"))?;
        cookies.add_macs(Instant::now(), &mut msg);
        let sent = Instant::now();
        sock.send_to(&msg, addr)
            .with_context(|| format!("sending to {addr}"))?;
        while let Some(left) = WAIT.checked_sub(sent.elapsed()) {
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let n = match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == addr => n,
                Ok(_) => continue,
                Err(e) if crate::nothing_arrived(&e) => break,
                Err(e) => return Err(e).context("receiving"),
            };
            let got = &buf[..n];
            if let Ok(r) = wire::Response::new_checked(got) {
                if r.receiver() == index
                    && handshake::consume_response(&local, &PresharedKey([0; 32]), &state, &r)
                        .is_ok()
                {
                    return Ok(Some(sent.elapsed()));
                }
            } else if let Ok(c) = wire::CookieReply::new_checked(got) {
                // Under load: answer again with the cookie (the next try).
                let _ = cookies.consume_reply(Instant::now(), &c);
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_each_part() {
        let v = json!({
            "addresses": ["192.0.2.7"],
            "facilitator": {"configured": true, "address": "203.0.113.1:7447", "reachable": true, "rtt_ms": 1.25},
            "dataplane": {"io_uring": {"ok": true, "detail": "d"}, "xdp": {"ok": false, "detail": "why"}},
        });
        let t = text(&v);
        assert!(t.contains("addresses:     192.0.2.7"), "{t}");
        assert!(
            t.contains("203.0.113.1:7447 answers a WireGuard handshake in 1.2 ms"),
            "{t}"
        );
        assert!(t.contains("xdp:           no: why"), "{t}");
        let none = text(
            &json!({"addresses": [], "facilitator": {"configured": false}, "dataplane": {"error": "e"}}),
        );
        assert!(
            none.contains("none configured") && none.contains("no global address"),
            "{none}"
        );
    }

    #[test]
    fn a_closed_port_is_unreachable_not_an_error() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        drop(s);
        let key = PrivateKey::from_bytes([3; 32]).public_key();
        assert_eq!(handshake_rtt(addr, &key).unwrap(), None);
    }
}
