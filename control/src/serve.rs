//! `portdistrict exit serve`: the provider process. It starts the dataplane on the
//! tunnel interface with the provider's WireGuard key, registers every authorized
//! consumer (its inner addresses) as a peer, addresses the tunnel (100.64.0.1/10),
//! applies the provider plan (forwarding and masquerade for authorized consumers
//! only), answers new consumers on the exit channel (TCP, Noise; [`channel`]) with
//! this node's attestation, and granted consumers' in-tunnel exit requests on
//! 100.64.0.1:51821, until SIGTERM or SIGINT, when it takes the plan back and deletes
//! the interface.
//!
//! A request is checked by [`negotiate::check`](portdistrict_exitnode::negotiate::check) (its proof of key ownership)
//! and decided by [`negotiate::decide`](portdistrict_exitnode::negotiate::decide); on a grant the store is saved first (a crash never
//! forgets a grant it sent), then the consumer becomes a peer, the firewall's
//! consumer set is replaced, and only then is the ack sent. Over the channel the store
//! changes only once the consumer confirmed, after it judged the attestation. The
//! negotiation and DNS sockets are bound to the tunnel interface; negotiation
//! datagrams and channel connections are rate limited per source and in all
//! ([`RateLimiter`](portdistrict_exitnode::ratelimit::RateLimiter)); a store that cannot be read or written for a moment is
//! logged and answered "unavailable", never fatal.

mod channel;
mod metrics;
mod negotiation;
mod sync;
mod uplink;

use uplink::{has_global_v6, policy_of, random_ula, Host};

use crate::dataplane::{Dataplane as _, UapiClient};
use crate::exit::ExitDir;
use crate::{dnsfwd, run_cmd, Dirs};
use anyhow::{bail, Context as _};
use portdistrict_exitnode::apply::{apply_planned, plan_undo, undo_plan, Undo};
use portdistrict_exitnode::policy::Cidr;
use portdistrict_exitnode::state::{private_dir, write_atomic};
use portdistrict_exitnode::store::Store;
use portdistrict_netlink as nl;
use portdistrict_wg::config::ConfigChange;
use portdistrict_wg::PrivateKey;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The provider's own address inside the tunnel.
pub const PROVIDER_V4: Ipv4Addr = portdistrict_exitnode::store::PROVIDER_V4;
/// The UDP port of exit negotiation inside the tunnel.
pub const NEGOTIATION_PORT: u16 = 51821;

/// Whether to offer IPv6 to consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6Mode {
    /// When the uplink has an IPv6 address beyond link-local.
    Auto,
    /// Always.
    On,
    /// Never (consumers then block IPv6).
    Off,
}

/// `exit serve` on the command line (checked into [`ServeOptions`]).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The interface towards the internet (consumers' traffic leaves through it,
    /// masqueraded)
    #[arg(long, value_name = "IFACE")]
    pub uplink: String,
    /// Where consumers reach this node, as invites carry it (repeatable; recorded for
    /// later `exit invite`s)
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: Vec<String>,
    /// The tunnel interface
    #[arg(long, value_name = "NAME", default_value = "pdexit0")]
    pub interface: String,
    /// WireGuard's UDP port
    #[arg(long, value_name = "PORT", default_value_t = 51820,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub listen_port: u16,
    /// The exit channel's TCP port (default: the same number as --listen-port)
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub channel_port: Option<u16>,
    /// Offer IPv6 to consumers: auto = when the uplink has a global IPv6 address
    #[arg(long, value_enum, default_value = "auto")]
    pub ipv6: Ipv6Mode,
    /// The resolver the tunnel's DNS forwarder (100.64.0.1) asks (default: the first
    /// nameserver of /etc/resolv.conf)
    #[arg(long, value_name = "IP[:PORT]")]
    pub dns_upstream: Option<String>,
    /// A destination consumers may reach although it is blocked by default (private,
    /// link-local, metadata addresses), repeatable
    #[arg(long, value_name = "CIDR")]
    pub allow_dest: Vec<String>,
    /// A group whose members, besides root, may use RUN_DIR/exit.sock
    #[arg(long, value_name = "GROUP")]
    pub control_group: Option<String>,
    /// This node's SEV-SNP report and certificates (report.bin, vcek.der, chain.pem);
    /// without it, the kernel's configfs-tsm where present
    #[arg(long, value_name = "DIR")]
    pub attestation: Option<PathBuf>,
    /// Another pinned AMD root key fingerprint (SHA-256, 64 hex digits), repeatable
    #[arg(long, value_name = "HEX")]
    pub attestation_root: Vec<String>,
    /// Serve Prometheus metrics (consumers, live invites, exit channel conversations)
    /// on http://ADDR:PORT/metrics, e.g. 127.0.0.1:9588 (off by default; keep it
    /// private)
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Options of `exit serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    uplink: String,
    interface: String,
    listen_port: u16,
    endpoints: Vec<SocketAddr>,
    ipv6: Ipv6Mode,
    dns_upstream: Option<SocketAddr>,
    allow_dest: Vec<Cidr>,
    control_group: Option<u32>,
    attestation: Option<PathBuf>,
    attestation_roots: Vec<[u8; 32]>,
    channel_port: Option<u16>,
    metrics_listen: Option<SocketAddr>,
}

impl ServeOptions {
    /// The exit channel's TCP port.
    pub fn channel_port(&self) -> u16 {
        self.channel_port.unwrap_or(self.listen_port)
    }

    /// Parses the options of `exit serve` (see [`ServeArgs`]), as on the command line.
    pub fn parse(opts: &[&str]) -> anyhow::Result<ServeOptions> {
        ServeOptions::from_args(crate::args::parse_args("exit serve", opts)?)
    }

    /// Checks `exit serve`'s options; errors name the option and what it takes.
    pub fn from_args(a: ServeArgs) -> anyhow::Result<ServeOptions> {
        let mut o = ServeOptions {
            uplink: String::new(),
            interface: "pdexit0".to_owned(),
            listen_port: 51820,
            endpoints: Vec::new(),
            ipv6: Ipv6Mode::Auto,
            dns_upstream: None,
            allow_dest: Vec::new(),
            control_group: None,
            attestation: None,
            attestation_roots: Vec::new(),
            channel_port: None,
            metrics_listen: a.metrics_listen,
        };
        o.uplink = crate::ifname("--uplink", &a.uplink)?;
        o.interface = crate::ifname("--interface", &a.interface)?;
        o.listen_port = a.listen_port;
        for value in &a.endpoint {
            o.endpoints.push(crate::args::endpoint(value)?);
        }
        o.ipv6 = a.ipv6;
        if let Some(value) = &a.dns_upstream {
            o.dns_upstream = Some(
                value
                    .parse::<SocketAddr>()
                    .or_else(|_| value.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        anyhow::anyhow!("--dns-upstream {value}: expected IP or IP:PORT")
                    })?,
            );
        }
        for value in &a.allow_dest {
            o.allow_dest.push(
                value
                    .parse::<Cidr>()
                    .map_err(|e| anyhow::anyhow!("--allow-dest {e}"))?,
            );
        }
        o.control_group = a
            .control_group
            .as_deref()
            .map(crate::ctl::parse_group)
            .transpose()?;
        o.attestation = a.attestation;
        o.channel_port = a.channel_port;
        for value in &a.attestation_root {
            let b = hex::decode(value)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .with_context(|| {
                    format!("--attestation-root {value}: expected 64 hex digits (SHA-256)")
                })?;
            o.attestation_roots.push(b);
        }
        if o.endpoints.len() > portdistrict_exitnode::invite::MAX_ENDPOINTS {
            bail!(
                "exit serve takes at most {} endpoints",
                portdistrict_exitnode::invite::MAX_ENDPOINTS
            );
        }
        Ok(o)
    }
}

/// This node's attestation, obtained once per start (never per connection) and
/// checked against its own keys; `None` where there is none (no `--attestation`, no
/// configfs-tsm). The exit control channel serves it to consumers.
fn attest_self(
    dir: &ExitDir,
    wg: &PrivateKey,
    o: &ServeOptions,
    say: &dyn Fn(&str),
) -> anyhow::Result<Option<crate::exit::attestation::Attestation>> {
    use crate::exit::attestation::{obtain, self_check, Source};
    let Some(source) = Source::choose(o.attestation.as_deref()) else {
        return Ok(None);
    };
    let noise = dir.noise_key()?.public();
    let wg_pub = wg.public_key();
    let data = portdistrict_control_core::attest::binding(&noise.0, wg_pub.as_bytes());
    let a = obtain(&source, &data).context("obtaining this node's attestation report")?;
    let v = self_check(
        &a,
        &noise,
        wg_pub.as_bytes(),
        &o.attestation_roots,
        crate::exit::now(),
    )?;
    if let Some(r) = &v.report {
        say(&format!(
            "attestation from {}: measurement {}, policy {:#x}{}",
            a.source,
            hex::encode(r.measurement),
            r.policy.0,
            match v.first_failure() {
                Some((c, e)) => format!(" (consumers will refuse it: {}: {e})", c.name()),
                None => String::new(),
            }
        ));
    }
    Ok(Some(a))
}

/// The dataplane binary: `PD_DATAPLANE`, else `portdistrict-dataplane` next to this
/// executable, else on the `PATH`.
pub(crate) fn dataplane_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PD_DATAPLANE") {
        return PathBuf::from(p);
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("portdistrict-dataplane")));
    sibling
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("portdistrict-dataplane"))
}

/// Takes back a plan a crashed `exit serve` left (its undo file in the run dir) and
/// deletes the tunnel interface it left (its dataplane exits with it).
fn recover(undo_path: &Path, ifname: &str, say: &dyn Fn(&str)) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(undo_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", undo_path.display())),
    };
    let undo: Undo = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged", undo_path.display()))?;
    say(&format!(
        "a previous exit serve did not stop cleanly; taking back its plan ({})",
        undo_path.display()
    ));
    undo_plan(&undo)?;
    if Path::new("/sys/class/net").join(ifname).exists() {
        nl::Handle::open()
            .and_then(|mut h| h.link_del(ifname))
            .with_context(|| format!("deleting {ifname}"))?;
    }
    std::fs::remove_file(undo_path).with_context(|| format!("removing {}", undo_path.display()))
}

/// Runs the provider until SIGTERM/SIGINT. `say` shows the command's own lines (the
/// recovery of a previous run, the provider up) to whoever started it; the rest of
/// what happens is logged.
pub fn serve(dirs: &Dirs, o: &ServeOptions, say: &dyn Fn(&str)) -> anyhow::Result<()> {
    let dir = ExitDir::open(dirs)?;
    let wg = dir.wg_key()?;
    let attestation =
        attest_self(&dir, &wg, o, say)?.map(|a| portdistrict_exitnode::channel::Attestation {
            report: a.report,
            vcek: a.vcek,
            chain: a.chain,
        });
    let noise = dir.noise_key()?;
    // Before anything changes: a port another process holds fails the start.
    let listener = channel::bind(o.channel_port())?;
    let metrics_listener = o
        .metrics_listen
        .map(|a| {
            portdistrict_metrics::http::bind(a)
                .with_context(|| format!("binding the metrics endpoint {a}"))
        })
        .transpose()?;
    private_dir(&dirs.run)
        .with_context(|| format!("creating {} (mode 0700)", dirs.run.display()))?;
    let undo_path = dirs.run.join("exit-undo.json");
    recover(&undo_path, &o.interface, say)?;
    // Before the plan switches forwarding on: what the host forwarded stays its own.
    let host = Host::read(&o.uplink)?;
    let ipv6 = match o.ipv6 {
        Ipv6Mode::On => true,
        Ipv6Mode::Off => false,
        Ipv6Mode::Auto => has_global_v6(&o.uplink),
    };
    let upstream = match o.dns_upstream {
        Some(u) => u,
        None => std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|t| dnsfwd::upstream_from_resolv_conf(&t))
            .context(
                "no DNS server for consumers: /etc/resolv.conf names none; pass --dns-upstream IP",
            )?,
    };
    let store = {
        let _lock = dir.lock()?;
        let mut store = dir.store()?;
        let mut changed = false;
        if !o.endpoints.is_empty() && store.endpoints != o.endpoints {
            store.endpoints = o.endpoints.clone();
            changed = true;
        }
        if store.channel_port != Some(o.channel_port()) {
            store.channel_port = Some(o.channel_port());
            changed = true;
        }
        if ipv6 && store.v6_prefix.is_none() {
            store.v6_prefix = Some(random_ula()?);
            changed = true;
        }
        if changed {
            dir.save(&store)?;
        }
        store
    };
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term)).context("signal handler")?;
    }
    if Path::new("/sys/class/net").join(&o.interface).exists() {
        bail!(
            "interface {} exists already: another exit serve runs, or delete it (ip link del {})",
            o.interface,
            o.interface
        );
    }
    let bin = dataplane_binary();
    run_cmd(&[&bin.to_string_lossy(), &o.interface])
        .with_context(|| format!("starting the dataplane {}", bin.display()))?;
    let access = crate::ctl::Access {
        group: o.control_group,
    };
    let ctl = crate::ctl::Control::bind(dirs, crate::ctl::Daemon::Exit, access)?;
    let metrics = Arc::new(metrics::ExitMetrics::default());
    if let Some(l) = metrics_listener {
        let addr = l.local_addr()?;
        let scrape = metrics::scraper(dir.clone(), Arc::clone(&metrics));
        portdistrict_metrics::http::spawn(l, scrape).context("starting the metrics thread")?;
        tracing::info!("metrics on http://{addr}/metrics");
    }
    let ctx = Serving {
        metrics,
        ctl: &ctl,
        o,
        dir: &dir,
        ipv6,
        upstream,
        term: &term,
        host,
        say,
        noise,
        attestation,
        listener,
    };
    let result = ctx.run(&wg, store, &undo_path);
    // The interface goes in any case; the dataplane exits with it.
    let _ = nl::Handle::open().and_then(|mut h| h.link_del(&o.interface));
    result
}

struct Serving<'a> {
    ctl: &'a crate::ctl::Control,
    o: &'a ServeOptions,
    dir: &'a ExitDir,
    ipv6: bool,
    upstream: SocketAddr,
    term: &'a Arc<AtomicBool>,
    host: Host,
    /// The command's own lines.
    say: &'a dyn Fn(&str),
    /// The exit channel's Noise static key.
    noise: portdistrict_exitnode::channel::NoiseSecretKey,
    /// This node's attestation, obtained once at start.
    attestation: Option<portdistrict_exitnode::channel::Attestation>,
    /// The exit channel's listener.
    listener: std::net::TcpListener,
    /// The exit channel's conversations, for `--metrics-listen`.
    metrics: Arc<metrics::ExitMetrics>,
}

impl Serving<'_> {
    fn run(&self, wg: &PrivateKey, store: Store, undo_path: &Path) -> anyhow::Result<()> {
        let o = self.o;
        UapiClient::new(&o.interface).apply(&ConfigChange {
            private_key: Some(Some(wg.clone())),
            listen_port: Some(o.listen_port),
            fwmark: None,
            replace_peers: true,
            peers: Vec::new(),
        })?;
        // The tunnel's addresses are part of the plan (applied with it).
        nl::Handle::open()
            .and_then(|mut h| h.link_set_up(&o.interface, true))
            .with_context(|| format!("setting {} up", o.interface))?;
        let plan = policy_of(o, &store, self.ipv6, &self.host).plan()?;
        // The way back is on disk before the plan is applied.
        let undo = plan_undo(&plan)?;
        write_atomic(undo_path, serde_json::to_string(&undo)?.as_bytes())
            .with_context(|| format!("writing {}", undo_path.display()))?;
        let result = apply_planned(&plan, &undo)
            .map_err(anyhow::Error::from)
            .and_then(|()| self.serving(store, wg));
        portdistrict_logging::notify::stopping();
        let restored = undo_plan(&undo);
        if restored.is_ok() {
            let _ = std::fs::remove_file(undo_path);
        }
        result.and(restored.map_err(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = ServeOptions::parse(&["--uplink", "eth0", "--listen-port", "4500"]).unwrap();
        assert_eq!(
            (o.uplink.as_str(), o.interface.as_str(), o.listen_port),
            ("eth0", "pdexit0", 4500)
        );
        assert!(ServeOptions::parse(&[])
            .unwrap_err()
            .to_string()
            .contains("--uplink"));
        assert!(ServeOptions::parse(&["--uplink", "e", "--listen-port", "0"]).is_err());
        assert!(ServeOptions::parse(&["--uplink", "e", "--what", "1"]).is_err());
        for bad in [
            &["--uplink", "eth*"][..],
            &["--uplink", "eth0", "--interface", "*"][..],
        ] {
            let e = ServeOptions::parse(bad).unwrap_err().to_string();
            assert!(e.contains("wildcards"), "{bad:?}: {e}");
        }
        let o = ServeOptions::parse(&[
            "--uplink",
            "e",
            "--allow-dest",
            "169.254.169.254",
            "--allow-dest",
            "10.0.0.0/8",
        ])
        .unwrap();
        let want: Vec<Cidr> = vec![
            "169.254.169.254/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        assert_eq!(o.allow_dest, want);
        let e = ServeOptions::parse(&["--uplink", "e", "--allow-dest", "10.1.2.3/8"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--allow-dest") && e.contains("10.0.0.0/8"),
            "{e}"
        );
        assert!(ServeOptions::parse(&["--uplink", "e", "--allow-dest", "nope"]).is_err());
        let o = ServeOptions::parse(&[
            "--uplink",
            "e",
            "--attestation",
            "/etc/portdistrict/attestation",
            "--attestation-root",
            &"ab".repeat(32),
        ])
        .unwrap();
        assert_eq!(
            o.attestation.as_deref(),
            Some(Path::new("/etc/portdistrict/attestation"))
        );
        assert_eq!(o.attestation_roots, vec![[0xab; 32]]);
        assert_eq!(o.metrics_listen, None);
        let o =
            ServeOptions::parse(&["--uplink", "e", "--metrics-listen", "127.0.0.1:9588"]).unwrap();
        assert_eq!(o.metrics_listen, Some("127.0.0.1:9588".parse().unwrap()));
        assert!(ServeOptions::parse(&["--uplink", "e", "--metrics-listen", "x"]).is_err());
        let e = ServeOptions::parse(&["--uplink", "e", "--attestation-root", "abcd"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("64 hex digits"), "{e}");
    }
}
