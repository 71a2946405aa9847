//! `portdistrict facilitator serve|show`: the NAT-traversal facilitator and relay.
//!
//! One process, one UDP socket on `--listen`, and an in-process WireGuard device
//! (`portdistrict-wg`, no TUN) in open admission: any node that completes a handshake
//! with the facilitator's key becomes a peer with one AllowedIP, its address in the
//! facilitator's tunnel ([`addr::node`](portdistrict_control_core::nat::addr::node)), so the facilitator sees the NAT mapping of
//! each node's dataplane socket and answers only the key that asked. Requests are the
//! `nat::wire` messages inside IPv6/UDP to `nat::addr::FACILITATOR` port
//! `nat::addr::PORT`; the decisions are the pure `nat::facilitator` and `nat::relay`
//! of `portdistrict-control-core`; this module owns the sockets,
//! the clock and the files:
//!
//! - `STATE_DIR/facilitator/key` (mode 0600): the facilitator's WireGuard key, made on
//!   first `serve` (or `show`);
//! - `STATE_DIR/facilitator/facilitator.json`: the listen address and relay ports the
//!   last `serve` used (for `show`);
//! - `RUN_DIR/facilitator-stats.json`: counters, rewritten every second while serving.
//!
//! Relay allocations are UDP sockets on the listen address in `--relay-ports`; they
//! forward verbatim between the two sources bound with their tokens and are closed
//! when idle. Nodes idle for [`NODE_IDLE`] are removed.

pub mod inner;
mod serve;

pub use serve::serve;

use crate::Dirs;
use anyhow::{bail, Context as _};
use portdistrict_wg::PublicKey;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A node that neither handshook nor sent anything for this long is removed.
pub const NODE_IDLE: Duration = Duration::from_secs(600);

/// Options of `facilitator serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// The UDP address WireGuard (and the relay ports) listen on.
    pub listen: SocketAddr,
    /// The relay's ports, inclusive; `None`: no relay.
    pub relay_ports: Option<(u16, u16)>,
    /// Bytes per second one relay allocation forwards.
    pub relay_rate: u64,
    /// An idle relay allocation is freed after this long.
    pub relay_idle: Duration,
    /// Nodes at most.
    pub max_nodes: usize,
}

/// `facilitator serve` on the command line (checked into [`ServeOptions`]).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The public UDP address nodes reach (e.g. 203.0.113.1:7447)
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
    /// Relay for pairs whose windows fail, on these UDP ports (e.g. 40000-40999)
    #[arg(long, value_name = "LO-HI")]
    pub relay_ports: Option<String>,
    /// Bytes per second one relay allocation forwards (at least 10000)
    #[arg(long, value_name = "BYTES", default_value_t = 25_000_000,
          value_parser = clap::value_parser!(u64).range(10_000..))]
    pub relay_rate: u64,
    /// An idle relay allocation is freed after this many seconds (5 to 86400)
    #[arg(long, value_name = "SECONDS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(5..=86_400))]
    pub relay_idle: u64,
    /// Nodes at most (1 to 1000000)
    #[arg(long, value_name = "N", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_nodes: u64,
}

impl ServeOptions {
    /// Parses the options of `facilitator serve` (see [`ServeArgs`]), as on the
    /// command line.
    pub fn parse(args: &[&str]) -> anyhow::Result<ServeOptions> {
        ServeOptions::from_args(crate::args::parse_args("facilitator serve", args)?)
    }

    /// Checks `facilitator serve`'s options.
    pub fn from_args(a: ServeArgs) -> anyhow::Result<ServeOptions> {
        let v = &a.listen;
        let listen = Some(v.parse::<SocketAddr>().with_context(|| {
            format!("facilitator serve: --listen {v}: not an ADDRESS:PORT (e.g. 203.0.113.1:7447)")
        })?);
        let mut o = ServeOptions {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            relay_ports: None,
            relay_rate: a.relay_rate,
            relay_idle: Duration::from_secs(a.relay_idle),
            max_nodes: usize::try_from(a.max_nodes).unwrap_or(usize::MAX),
        };
        if let Some(v) = &a.relay_ports {
            let (lo, hi) = v
                .split_once('-')
                .and_then(|(l, h)| Some((l.parse::<u16>().ok()?, h.parse::<u16>().ok()?)))
                .filter(|(l, h)| *l > 0 && l < h)
                .with_context(|| {
                    format!("facilitator serve: --relay-ports {v}: not LO-HI with 0 < LO < HI (e.g. 40000-40999)")
                })?;
            o.relay_ports = Some((lo, hi));
        }
        o.listen = listen.context(
            "facilitator serve: --listen ADDRESS:PORT is required (the public address nodes reach)",
        )?;
        if o.listen.port() == 0 {
            bail!("facilitator serve: --listen needs a port other than 0");
        }
        if let Some((lo, hi)) = o.relay_ports {
            if (lo..=hi).contains(&o.listen.port()) {
                bail!("facilitator serve: --relay-ports {lo}-{hi} contains the --listen port");
            }
        }
        Ok(o)
    }
}

/// What `serve` records for `show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Recorded {
    listen: SocketAddr,
    relay_ports: Option<(u16, u16)>,
}

fn dir(dirs: &Dirs) -> PathBuf {
    dirs.state.join("facilitator")
}

fn key(dirs: &Dirs) -> anyhow::Result<portdistrict_wg::PrivateKey> {
    let d = dir(dirs);
    portdistrict_exitnode::state::private_dir(&d)
        .with_context(|| format!("creating {} (mode 0700)", d.display()))?;
    crate::wg_key_file(&d.join("key"))
}

/// `facilitator show [--json]`: the facilitator's public key and the listen address
/// its last `serve` used, for its operator to hand to nodes
/// (`portdistrictd --facilitator HOST:PORT:PUBLIC_KEY`).
pub fn show(dirs: &Dirs, json: bool) -> anyhow::Result<String> {
    let public = key(dirs)?.public_key();
    let path = dir(dirs).join("facilitator.json");
    let recorded: Option<Recorded> = match std::fs::read_to_string(&path) {
        Ok(t) => Some(
            serde_json::from_str(&t).with_context(|| format!("{} is damaged", path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let listen = recorded.as_ref().map(|r| r.listen);
    let relay = recorded.as_ref().and_then(|r| r.relay_ports);
    if json {
        return Ok(serde_json::json!({
            "public_key": public.to_base64(),
            "listen": listen.map(|l| l.to_string()),
            "relay_ports": relay.map(|(lo, hi)| format!("{lo}-{hi}")),
            "node_option": listen.map(|l| format!("{l}:{}", public.to_base64())),
        })
        .to_string());
    }
    Ok(match listen {
        Some(l) => format!(
            "public key: {}\nlisten: {l}\nrelay ports: {}\nnodes use: portdistrictd --facilitator {l}:{}",
            public.to_base64(),
            relay.map_or("none (no relay)".to_owned(), |(lo, hi)| format!("{lo}-{hi}")),
            public.to_base64()
        ),
        None => format!(
            "public key: {}\nlisten: not served yet (run `portdistrict facilitator serve --listen ADDRESS:PORT`)",
            public.to_base64()
        ),
    })
}

/// `HOST:PORT:PUBLIC_KEY` (what `portdistrictd --facilitator` takes; the key in
/// base64). An IPv6 host is written in brackets.
pub fn parse_facilitator(s: &str) -> anyhow::Result<(SocketAddr, PublicKey)> {
    let (ep, key) = s.rsplit_once(':').with_context(|| {
        format!("--facilitator {s}: not HOST:PORT:PUBLIC_KEY (see `portdistrict facilitator show` on the facilitator)")
    })?;
    let key = PublicKey::from_base64(key).with_context(|| {
        format!("--facilitator {s}: {key} is not a WireGuard public key (base64)")
    })?;
    let ep = std::net::ToSocketAddrs::to_socket_addrs(ep)
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| {
            format!("--facilitator {s}: {ep} is not HOST:PORT (or the name does not resolve)")
        })?;
    Ok((ep, key))
}
