//! `use status`: what system mode applied, whether the kill switch is in place as
//! planned (read back), and how the tunnel is.

use super::{boot, kill_switch_in_place, link_exists, table_present, UseDir};
use crate::dataplane::{Dataplane as _, UapiClient};
use crate::Dirs;
use portdistrict_exitnode::invite::Invite;
use std::fmt::Write as _;

/// `use status`.
pub fn status(dirs: &Dirs) -> anyhow::Result<String> {
    let dir = UseDir::new(dirs)?;
    // No lock: a report must not wait for a `use` that waits for its provider.
    let lockdown = dir.lockdown();
    let Some(s) = dir.load()? else {
        return Ok(if lockdown {
            format!(
                "system mode: off\nlockdown: on (everything blocked: {})\n",
                boot::lockdown_firewall()
            )
        } else {
            "system mode: off\nlockdown: off\n".to_owned()
        });
    };
    let mut out = String::new();
    let _ = writeln!(out, "system mode: on (interface {})", s.interface);
    let _ = writeln!(out, "lockdown: {}", if lockdown { "on" } else { "off" });
    let _ = writeln!(out, "provider: {}", s.endpoint);
    match s.granted {
        Some(g) => {
            let _ = writeln!(out, "inner IPv4: {}", g.inner_v4);
            match g.inner_v6 {
                Some(a) => {
                    let _ = writeln!(out, "inner IPv6: {a}");
                }
                None => {
                    let _ = writeln!(out, "inner IPv6: none (IPv6 blocked)");
                }
            }
            let _ = writeln!(out, "DNS: {}", g.resolver);
        }
        None => {
            let _ = writeln!(out, "negotiation: not finished (blocked)");
        }
    }
    let _ = writeln!(
        out,
        "LAN: {}",
        if s.allow_lan { "allowed" } else { "blocked" }
    );
    let ks = if Invite::decode(&s.invite).is_ok_and(|i| kill_switch_in_place(&s, &i)) {
        "on"
    } else if table_present() {
        "NOT AS PLANNED (run `portdistrict use` again or `portdistrict use restore`)"
    } else {
        "MISSING (not protected! `portdistrict use restore` puts it back)"
    };
    let _ = writeln!(out, "kill switch: {ks}");
    if !link_exists(&s.interface) {
        let _ = writeln!(
            out,
            "tunnel: down (the dataplane is not running; traffic is blocked; `portdistrict use` again brings it back)"
        );
    } else {
        match UapiClient::new(&s.interface).peers() {
            Ok(peers) => {
                // The tunnel has one peer, the provider.
                let peer = peers.values().next();
                let hs = peer
                    .and_then(|p| p.last_handshake)
                    .map_or(0, |t| t.as_secs());
                let age = if hs == 0 {
                    "never".to_owned()
                } else {
                    format!("{}s ago", crate::exit::now().saturating_sub(hs))
                };
                let _ = writeln!(
                    out,
                    "tunnel: up, last handshake {age}, received {} B, sent {} B",
                    peer.map_or(0, |p| p.rx_bytes),
                    peer.map_or(0, |p| p.tx_bytes)
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "tunnel: interface present, dataplane not answering ({e:#})"
                );
            }
        }
    }
    Ok(out)
}
