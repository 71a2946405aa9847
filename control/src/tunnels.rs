//! `portdistrict tunnel list|show|connect|disconnect` and `portdistrict status`.
//!
//! `portdistrictd` writes what it connected after every cycle to `RUN_DIR/tunnels.json`
//! (atomically); these commands join that with what the dataplane reports over its
//! UAPI socket (handshake, bytes, current endpoint; this process is not the producer
//! of the daemon's shared-memory region, so it uses the UAPI client), so `tunnel show` and `wg show`
//! agree by construction. `tunnel disconnect NAME` takes a peer device off the tunnel
//! at once and records it in `STATE_DIR/disconnected.json`, which the daemon honours
//! until `tunnel connect NAME`.

use crate::dataplane::{Dataplane as _, UapiClient};
use crate::Dirs;
use anyhow::{bail, Context as _};
use portdistrict_exitnode::state::{private_dir, write_atomic};
use portdistrict_wg::config::{ConfigChange, PeerChange, PeerSnapshot};
use portdistrict_wg::PublicKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One peer device as the daemon last connected it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    /// `device.namespace`.
    pub name: String,
    /// Its WireGuard key, base64.
    pub wg_key: String,
    /// Its /64.
    pub prefix: String,
    /// The endpoint its record gave.
    pub endpoint: Option<String>,
    /// Its NAT-traversal path (absent in files from before NAT traversal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathInfo>,
}

/// How a peer's path looks in `tunnels.json` (and `tunnel list|show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathInfo {
    /// `direct`, `relay` or `none`.
    pub path: String,
    /// The endpoint traversal pinned (the direct one found, or the relay), if any.
    pub pinned: Option<String>,
    /// The last window's result: `direct via ADDR` or `failed`.
    pub last_window: Option<String>,
    /// When the next window is planned (Unix seconds).
    pub next_window: Option<u64>,
    /// Windows opened.
    pub windows_tried: u64,
    /// Windows that ended direct.
    pub windows_succeeded: u64,
    /// Times the path went to the relay.
    pub relayed: u64,
    /// The last direct window: milliseconds from its start to the handshake.
    #[serde(default)]
    pub last_direct_ms: Option<u64>,
    /// The last fallback: milliseconds from the failed window's end to the relay.
    #[serde(default)]
    pub last_relay_ms: Option<u64>,
}

/// `RUN_DIR/tunnels.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelsFile {
    /// The tunnel interface.
    pub interface: String,
    /// When the last cycle finished (Unix seconds).
    pub last_cycle: u64,
    /// The daemon's process ID.
    pub pid: u32,
    /// Connected peer devices.
    pub tunnels: Vec<Tunnel>,
}

fn tunnels_path(dirs: &Dirs) -> PathBuf {
    dirs.run.join("tunnels.json")
}

fn disconnected_path(dirs: &Dirs) -> PathBuf {
    dirs.state.join("disconnected.json")
}

/// Written by the daemon after each cycle.
pub fn save(dirs: &Dirs, f: &TunnelsFile) -> anyhow::Result<()> {
    private_dir(&dirs.run)
        .with_context(|| format!("creating {} (mode 0700)", dirs.run.display()))?;
    write_atomic(
        &tunnels_path(dirs),
        serde_json::to_string_pretty(f)?.as_bytes(),
    )
    .with_context(|| format!("writing {}", tunnels_path(dirs).display()))
}

impl TunnelsFile {
    /// The tunnel `name` (`device.namespace`, or its first label).
    pub(crate) fn find(&self, name: &str) -> anyhow::Result<&Tunnel> {
        self.tunnels
            .iter()
            .find(|t| t.name == name || t.name.starts_with(&format!("{name}.")))
            .with_context(|| format!("no tunnel {name:?} (see `portdistrict tunnel list`)"))
    }
}

pub(crate) fn load(dirs: &Dirs) -> anyhow::Result<TunnelsFile> {
    let path = tunnels_path(dirs);
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("{} is damaged", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no tunnels yet: portdistrictd has not completed a cycle with this --run-dir ({})",
            dirs.run.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Peer devices taken off by hand (`device.namespace` names).
pub fn disconnected(dirs: &Dirs) -> anyhow::Result<Vec<String>> {
    let path = disconnected_path(dirs);
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("{} is damaged", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Live per-peer facts from the dataplane, by base64 key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Live {
    pub(crate) endpoint: Option<String>,
    pub(crate) handshake: u64,
    pub(crate) rx: u64,
    pub(crate) tx: u64,
}

pub(crate) fn live(ifname: &str) -> BTreeMap<String, Live> {
    let Ok(peers) = UapiClient::new(ifname).peers() else {
        return BTreeMap::new();
    };
    live_of(&peers)
}

fn live_of(peers: &BTreeMap<PublicKey, PeerSnapshot>) -> BTreeMap<String, Live> {
    peers
        .iter()
        .map(|(key, p)| {
            let live = Live {
                endpoint: p.endpoint.map(|e| e.to_string()),
                handshake: p.last_handshake.map_or(0, |t| t.as_secs()),
                rx: p.rx_bytes,
                tx: p.tx_bytes,
            };
            (key.to_base64(), live)
        })
        .collect()
}

fn age(now: u64, t: u64) -> String {
    if t == 0 {
        "never".to_owned()
    } else {
        format!("{}s ago", now.saturating_sub(t))
    }
}

/// `tunnel list [--json]`.
pub fn list(dirs: &Dirs, json: bool) -> anyhow::Result<String> {
    let f = load(dirs)?;
    let live = live(&f.interface);
    let now = crate::exit::now();
    let off = disconnected(dirs)?;
    if json {
        let v: Vec<_> = f
            .tunnels
            .iter()
            .map(|t| {
                let l = live.get(&t.wg_key).cloned().unwrap_or_default();
                json_of(t, l)
            })
            .chain(
                off.iter()
                    .map(|n| serde_json::json!({"name": n, "disconnected": true})),
            )
            .collect();
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut s = String::new();
    for t in &f.tunnels {
        let l = live.get(&t.wg_key).cloned().unwrap_or_default();
        let _ = writeln!(
            s,
            "{}  {}  path {}  handshake {}  rx {} B  tx {} B",
            t.name,
            t.prefix,
            t.path.as_ref().map_or("none", |p| p.path.as_str()),
            age(now, l.handshake),
            l.rx,
            l.tx
        );
    }
    for n in off {
        let _ = writeln!(
            s,
            "{n}  disconnected by hand (`portdistrict tunnel connect {n}`)"
        );
    }
    if s.is_empty() {
        s.push_str("no tunnels: no trusted peer device found yet\n");
    }
    Ok(s)
}

/// One tunnel as `tunnel list --json` and `tunnel show --json` print it.
fn json_of(t: &Tunnel, l: Live) -> serde_json::Value {
    let p = t.path.clone();
    serde_json::json!({
        "name": t.name, "wg_key": t.wg_key, "prefix": t.prefix,
        "endpoint": l.endpoint.or(t.endpoint.clone()),
        "last_handshake": l.handshake, "rx_bytes": l.rx, "tx_bytes": l.tx,
        "path": p.as_ref().map_or("none", |p| p.path.as_str()),
        "pinned": p.as_ref().and_then(|p| p.pinned.clone()),
        "last_window": p.as_ref().and_then(|p| p.last_window.clone()),
        "next_window": p.as_ref().and_then(|p| p.next_window),
        "windows_tried": p.as_ref().map_or(0, |p| p.windows_tried),
        "windows_succeeded": p.as_ref().map_or(0, |p| p.windows_succeeded),
        "relayed": p.as_ref().map_or(0, |p| p.relayed),
        "last_direct_ms": p.as_ref().and_then(|p| p.last_direct_ms),
        "last_relay_ms": p.as_ref().and_then(|p| p.last_relay_ms),
    })
}

/// `tunnel show NAME [--json]`.
pub fn show(dirs: &Dirs, name: &str, json: bool) -> anyhow::Result<String> {
    let f = load(dirs)?;
    let t = f.find(name)?;
    let l = live(&f.interface)
        .get(&t.wg_key)
        .cloned()
        .unwrap_or_default();
    if json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&json_of(t, l))?
        ));
    }
    let now = crate::exit::now();
    let mut s = String::new();
    let _ = writeln!(s, "tunnel:         {}", t.name);
    let _ = writeln!(s, "interface:      {}", f.interface);
    let _ = writeln!(s, "public key:     {}", t.wg_key);
    let _ = writeln!(s, "allowed ips:    {}", t.prefix);
    let _ = writeln!(
        s,
        "endpoint:       {}",
        l.endpoint
            .or(t.endpoint.clone())
            .unwrap_or_else(|| "(none)".into())
    );
    let _ = writeln!(s, "last handshake: {}", age(now, l.handshake));
    let _ = writeln!(s, "transfer:       {} B received, {} B sent", l.rx, l.tx);
    let p = t.path.as_ref();
    let _ = writeln!(
        s,
        "path:           {}",
        p.map_or("none", |p| p.path.as_str())
    );
    if let Some(p) = p {
        if let Some(pinned) = &p.pinned {
            let _ = writeln!(s, "pinned:         {pinned}");
        }
        let _ = writeln!(
            s,
            "last window:    {}",
            p.last_window.as_deref().unwrap_or("(none yet)")
        );
        if let Some(next) = p.next_window {
            let _ = writeln!(s, "next window:    in {}s", next.saturating_sub(now));
        }
        let _ = writeln!(
            s,
            "windows:        {} tried, {} direct, {} times relayed",
            p.windows_tried, p.windows_succeeded, p.relayed
        );
    }
    Ok(s)
}

/// `tunnel disconnect NAME` (takes it off now; the daemon leaves it off) and `tunnel
/// connect NAME` (lets the daemon connect it again at its next cycle).
pub fn set_connected(dirs: &Dirs, name: &str, connect: bool) -> anyhow::Result<String> {
    let mut off = disconnected(dirs)?;
    if connect {
        let before = off.len();
        off.retain(|n| n != name);
        if off.len() == before {
            bail!("{name} is not disconnected by hand; nothing to do");
        }
    } else {
        let f = load(dirs)?;
        let t = f
            .tunnels
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("no tunnel {name:?} (see `portdistrict tunnel list`)"))?;
        let mut p =
            PeerChange::new(PublicKey::from_base64(&t.wg_key).map_err(|e| anyhow::anyhow!("{e}"))?);
        p.remove = true;
        UapiClient::new(&f.interface).apply(&ConfigChange {
            private_key: None,
            listen_port: None,
            fwmark: None,
            replace_peers: false,
            peers: vec![p],
        })?;
        if !off.iter().any(|n| n == name) {
            off.push(name.to_owned());
        }
    }
    private_dir(&dirs.state)
        .with_context(|| format!("creating {} (mode 0700)", dirs.state.display()))?;
    write_atomic(
        &disconnected_path(dirs),
        serde_json::to_string_pretty(&off)?.as_bytes(),
    )
    .with_context(|| format!("writing {}", disconnected_path(dirs).display()))?;
    Ok(if connect {
        format!("{name}: portdistrictd connects it again at its next cycle")
    } else {
        format!("{name} disconnected; portdistrictd leaves it off until `portdistrict tunnel connect {name}`")
    })
}

/// `status [--json]`.
pub fn status(dirs: &Dirs, json: bool) -> anyhow::Result<String> {
    let rec = crate::node::record(dirs)?;
    let peers = crate::node::load_peers(dirs)?;
    let device = crate::device::this_device(dirs).map(|(n, _)| n).ok();
    let f = load(dirs).ok();
    let now = crate::exit::now();
    let running = f
        .as_ref()
        .is_some_and(|f| Path::new(&format!("/proc/{}", f.pid)).exists());
    let trusted = peers.trusted().count();
    let (tunnels, up) = f.as_ref().map_or((0, 0), |f| {
        let live = live(&f.interface);
        let up = f
            .tunnels
            .iter()
            .filter(|t| {
                live.get(&t.wg_key)
                    .is_some_and(|l| l.handshake > 0 && now.saturating_sub(l.handshake) < 180)
            })
            .count();
        (f.tunnels.len(), up)
    });
    let xdp = f
        .as_ref()
        .and_then(|f| UapiClient::new(&f.interface).counters().ok())
        .map(|s| xdp_summary(&s));
    if json {
        let v = serde_json::json!({
            "node_id": rec.identity.node_id(), "namespace": rec.identity.namespace,
            "device": device, "daemon_running": running,
            "last_cycle": f.as_ref().map(|f| f.last_cycle),
            "trusted_peers": trusted, "tunnels": tunnels, "tunnels_up": up,
            "xdp": xdp.as_ref().map(|x| serde_json::json!({
                "mode": x.mode, "interfaces": x.interfaces, "dropped": x.dropped,
                "drops": x.drops.iter().cloned().collect::<BTreeMap<String, u64>>(),
            })),
        });
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "identity: {} ({})",
        rec.identity.namespace,
        rec.identity.node_id()
    );
    let _ = writeln!(
        s,
        "device:   {}",
        device
            .as_deref()
            .unwrap_or("none (`portdistrict device init --name NAME`)")
    );
    let _ = writeln!(
        s,
        "daemon:   {}",
        match &f {
            Some(f) if running => format!(
                "running (pid {}), last cycle {}",
                f.pid,
                age(now, f.last_cycle)
            ),
            Some(f) => format!("not running; last cycle {}", age(now, f.last_cycle)),
            None => "no cycle completed yet".to_owned(),
        }
    );
    let _ = writeln!(s, "peers:    {trusted} trusted of {}", peers.peers.len());
    let _ = writeln!(
        s,
        "tunnels:  {tunnels} ({up} with a handshake in the last 3 minutes)"
    );
    if let Some(x) = &xdp {
        let _ = writeln!(s, "xdp:      {}", x.line());
    }
    Ok(s)
}

/// The XDP part of the dataplane's counters.
#[derive(Debug, Default, PartialEq)]
struct XdpSummary {
    mode: String,
    interfaces: String,
    dropped: u64,
    /// Drops by reason (`bad_type`, ...), in the dataplane's order, nonzero only.
    drops: Vec<(String, u64)>,
}

impl XdpSummary {
    fn line(&self) -> String {
        if self.mode == "off" {
            return "off".into();
        }
        let ifs = if self.interfaces.is_empty() {
            "no interface yet".to_owned()
        } else {
            format!("on {}", self.interfaces)
        };
        let why: Vec<String> = self.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        if why.is_empty() {
            format!("{} {ifs}; nothing dropped", self.mode)
        } else {
            format!(
                "{} {ifs}; dropped {} ({})",
                self.mode,
                self.dropped,
                why.join(", ")
            )
        }
    }
}

fn xdp_summary(stats: &BTreeMap<String, String>) -> XdpSummary {
    let num = |k: &str| {
        stats
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    XdpSummary {
        mode: stats.get("xdp").cloned().unwrap_or_else(|| "off".into()),
        interfaces: stats.get("xdp_interfaces").cloned().unwrap_or_default(),
        dropped: num("xdp_dropped"),
        drops: [
            "truncated",
            "bad_type",
            "bad_length",
            "unknown_receiver",
            "rate_limited",
        ]
        .iter()
        .map(|r| (r.to_string(), num(&format!("xdp_drop_{r}"))))
        .filter(|(_, v)| *v > 0)
        .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_drops_are_summed_up_by_reason() {
        let stats: BTreeMap<String, String> = [
            ("xdp", "filter"),
            ("xdp_interfaces", "eth0:native"),
            ("xdp_dropped", "12"),
            ("xdp_drop_bad_type", "10"),
            ("xdp_drop_rate_limited", "2"),
            ("xdp_drop_truncated", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let x = xdp_summary(&stats);
        assert_eq!(
            x.line(),
            "filter on eth0:native; dropped 12 (bad_type 10, rate_limited 2)"
        );
        let off = xdp_summary(&[("xdp".to_string(), "off".to_string())].into());
        assert_eq!(off.line(), "off");
    }

    #[test]
    fn live_facts_come_from_the_dataplane_peers() {
        let dump = format!(
            "public_key={}\nendpoint=10.0.0.1:51820\nlast_handshake_time_sec=100\nrx_bytes=5\ntx_bytes=7\nallowed_ip=fd00::/64\nerrno=0\n\n",
            "03".repeat(32)
        );
        let snap = portdistrict_wg::uapi::parse_get(&dump).unwrap();
        let l = live_of(&snap.peers.into_iter().map(|p| (p.public_key, p)).collect());
        let got = &l[&PublicKey([3; 32]).to_base64()];
        assert_eq!(got.endpoint.as_deref(), Some("10.0.0.1:51820"));
        assert_eq!((got.handshake, got.rx, got.tx), (100, 5, 7));
        assert_eq!(age(110, 100), "10s ago");
        assert_eq!(age(110, 0), "never");
    }
}
