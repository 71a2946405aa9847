//! `use status`: what system mode applied, whether the kill switch is in place as
//! planned (read back), and how the tunnel is.

use super::{boot, kill_switch_in_place, link_exists, table_present, UseDir};
use crate::dataplane::{Dataplane as _, UapiClient};
use crate::Dirs;
use portdistrict_exitnode::invite::Invite;
use std::fmt::Write as _;

/// What `use status` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UseStatus {
    /// Whether system mode is on.
    pub system_mode: bool,
    /// Whether lockdown is on.
    pub lockdown: bool,
    /// Without system mode, under lockdown: what the firewall holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lockdown_firewall: Option<String>,
    /// With system mode: the rest.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub on: Option<SystemMode>,
}

/// System mode's part of [`UseStatus`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SystemMode {
    /// The tunnel interface.
    pub interface: String,
    /// The provider's endpoint in use.
    pub provider: String,
    /// What the provider granted (`None`: not yet, everything blocked).
    pub granted: Option<super::Granted>,
    /// Whether the LAN is allowed.
    pub allow_lan: bool,
    /// How many grants pin the exit's attestation.
    pub grants: usize,
    /// `on`, `not_as_planned` or `missing`.
    pub kill_switch: &'static str,
    /// `up`, `down` or `not_answering`.
    pub tunnel: &'static str,
    /// Seconds since the last handshake (`None`: never, or the tunnel is not up).
    pub last_handshake_secs_ago: Option<u64>,
    /// Bytes received through the tunnel.
    pub rx_bytes: u64,
    /// Bytes sent through it.
    pub tx_bytes: u64,
    /// Why the dataplane did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `use status [--json]`.
pub fn status(dirs: &Dirs, json: bool) -> anyhow::Result<String> {
    let st = gather(dirs)?;
    Ok(if json {
        format!("{}\n", serde_json::to_string_pretty(&st)?)
    } else {
        render(&st)
    })
}

/// Reads what system mode applied and how the tunnel is.
fn gather(dirs: &Dirs) -> anyhow::Result<UseStatus> {
    let dir = UseDir::new(dirs)?;
    // No lock: a report must not wait for a `use` that waits for its provider.
    let lockdown = dir.lockdown();
    let Some(s) = dir.load()? else {
        return Ok(UseStatus {
            system_mode: false,
            lockdown,
            lockdown_firewall: lockdown.then(|| boot::lockdown_firewall().to_owned()),
            on: None,
        });
    };
    let kill_switch = if Invite::decode(&s.invite).is_ok_and(|i| kill_switch_in_place(&s, &i)) {
        "on"
    } else if table_present() {
        "not_as_planned"
    } else {
        "missing"
    };
    let mut on = SystemMode {
        interface: s.interface.clone(),
        provider: s.endpoint.to_string(),
        granted: s.granted,
        allow_lan: s.allow_lan,
        grants: s.grants.len(),
        kill_switch,
        tunnel: "down",
        last_handshake_secs_ago: None,
        rx_bytes: 0,
        tx_bytes: 0,
        error: None,
    };
    if link_exists(&s.interface) {
        match UapiClient::new(&s.interface).peers() {
            Ok(peers) => {
                // The tunnel has one peer, the provider.
                let peer = peers.values().next();
                on.tunnel = "up";
                on.last_handshake_secs_ago = peer
                    .and_then(|p| p.last_handshake)
                    .map(|t| t.as_secs())
                    .filter(|&t| t != 0)
                    .map(|t| crate::exit::now().saturating_sub(t));
                on.rx_bytes = peer.map_or(0, |p| p.rx_bytes);
                on.tx_bytes = peer.map_or(0, |p| p.tx_bytes);
            }
            Err(e) => {
                on.tunnel = "not_answering";
                on.error = Some(format!("{e:#}"));
            }
        }
    }
    Ok(UseStatus {
        system_mode: true,
        lockdown,
        lockdown_firewall: None,
        on: Some(on),
    })
}

/// The text of `use status`.
fn render(st: &UseStatus) -> String {
    let Some(on) = &st.on else {
        return match &st.lockdown_firewall {
            Some(fw) => format!("system mode: off\nlockdown: on (everything blocked: {fw})\n"),
            None => "system mode: off\nlockdown: off\n".to_owned(),
        };
    };
    let mut out = String::new();
    let _ = writeln!(out, "system mode: on (interface {})", on.interface);
    let _ = writeln!(out, "lockdown: {}", if st.lockdown { "on" } else { "off" });
    let _ = writeln!(out, "provider: {}", on.provider);
    match on.granted {
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
        if on.allow_lan { "allowed" } else { "blocked" }
    );
    if on.grants > 0 {
        let _ = writeln!(out, "attestation: pinned by {} grant(s)", on.grants);
    }
    let ks = match on.kill_switch {
        "on" => "on",
        "not_as_planned" => {
            "NOT AS PLANNED (run `portdistrict use` again or `portdistrict use restore`)"
        }
        _ => "MISSING (not protected! `portdistrict use restore` puts it back)",
    };
    let _ = writeln!(out, "kill switch: {ks}");
    match on.tunnel {
        "up" => {
            let age = on
                .last_handshake_secs_ago
                .map_or("never".to_owned(), |a| format!("{a}s ago"));
            let _ = writeln!(
                out,
                "tunnel: up, last handshake {age}, received {} B, sent {} B",
                on.rx_bytes, on.tx_bytes
            );
        }
        "down" => {
            let _ = writeln!(
                out,
                "tunnel: down (the dataplane is not running; traffic is blocked; `portdistrict use` again brings it back)"
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "tunnel: interface present, dataplane not answering ({})",
                on.error.as_deref().unwrap_or("")
            );
        }
    }
    out
}

/// For `portdistrict ping provider`: the header (provider, tunnel, last handshake) and
/// a probe to call once per answer wanted (see [`crate::ping`]).
pub fn provider_probe(
    dirs: &Dirs,
    wait: std::time::Duration,
) -> anyhow::Result<(
    String,
    impl FnMut() -> anyhow::Result<Option<std::time::Duration>>,
)> {
    use anyhow::Context as _;
    let st = gather(dirs)?;
    let on = st
        .on
        .context("system mode is not on: `portdistrict use INVITE --mode system` first")?;
    let granted = on
        .granted
        .context("system mode has no grant yet (blocked): `portdistrict use` again to finish it")?;
    let dir = UseDir::new(dirs)?;
    let s = dir.load()?.context("system mode's state went away")?;
    let invite = Invite::decode(&s.invite).context("the saved invite")?;
    let key = dir.wg_key()?;
    let handshake = match on.last_handshake_secs_ago {
        Some(t) => format!("last handshake {t}s ago"),
        None => "no handshake yet".to_owned(),
    };
    let header = format!(
        "provider {} on {} (tunnel {}, kill switch {}): path direct, {handshake}\n",
        on.provider, on.interface, on.tunnel, on.kill_switch
    );
    let probe = move || super::negotiation::probe_once(granted.inner_v4, &invite, &key, wait);
    Ok((header, probe))
}
