//! `portdistrictd`'s options: flags and `--config` files.

use super::{MIN_RECORD_LIFETIME, RECORD_LIFETIME};
use crate::dns::DnsConfig;
use crate::node::SecretOptions;
use anyhow::{bail, Context as _};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The longest `--record-lifetime` (thirty days).
const MAX_RECORD_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// The longest `--interval` between cycles.
const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// Options of `portdistrictd`.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// DNS settings.
    pub dns: DnsConfig,
    /// How to unlock the identity.
    pub secret: SecretOptions,
    /// The tunnel interface (created with the dataplane when missing).
    pub interface: String,
    /// This device's WireGuard port.
    pub listen_port: u16,
    /// Endpoints to publish instead of the detected ones.
    pub endpoints: Vec<SocketAddr>,
    /// Time between cycles.
    pub interval: Duration,
    /// How long the records this device publishes are valid (seconds). It also bounds
    /// how long peers keep this device's tunnels when its records fail.
    pub record_lifetime: u64,
    /// One cycle, then exit.
    pub once: bool,
    /// Who besides root may use the control socket (`--control-group`).
    pub control_group: Option<u32>,
    /// The NAT-traversal facilitator (`--facilitator HOST:PORT:PUBLIC_KEY`).
    pub facilitator: Option<(SocketAddr, portdistrict_wg::PublicKey)>,
    /// Sync-window timings (`--primer`, `--primer-ttl`, `--punch`, `--first-wait`).
    pub windows: portdistrict_control_core::nat::path::Settings,
    /// Start this device's windows this much late (`--window-skew`): emulates a
    /// clock this far behind the peer's, for tests of the primer against skew.
    pub window_skew: Duration,
    /// Shared-secret windows (no facilitator): one per this long
    /// (`--secret-windows-every`, default 60 s).
    pub secret_every: Duration,
    /// Where to serve Prometheus metrics (`--metrics-listen`); `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
}

fn parse_addr(v: &str, default_port: u16, flag: &str) -> anyhow::Result<SocketAddr> {
    v.parse::<SocketAddr>()
        .or_else(|_| {
            v.parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, default_port))
        })
        .map_err(|_| anyhow::anyhow!("{flag} {v}: expected IP or IP:PORT"))
}

/// `500ms` (milliseconds, zero allowed) or a duration `parse_duration` takes (`2s`).
fn parse_ms(v: &str, max: Duration) -> anyhow::Result<Duration> {
    let d = match v.strip_suffix("ms") {
        Some(n) => Duration::from_millis(
            n.parse()
                .with_context(|| format!("duration {v:?}: expected a number of ms, like 500ms"))?,
        ),
        None => crate::parse_duration(v, max)?,
    };
    if d > max {
        bail!("duration {v:?} is too long: at most {}s", max.as_secs());
    }
    Ok(d)
}

/// The configuration file `portdistrictd` reads when it exists and no `--config` is
/// given.
pub const DEFAULT_CONFIG: &str = "/etc/portdistrict/portdistrictd.toml";

/// `portdistrictd`'s command line. Every option but `--config`, `--once` and the
/// directories can also be a key of the TOML configuration file, with the same name
/// (`dns-server = "192.0.2.53"`, `endpoint = ["198.51.100.7:51820"]`,
/// `listen-port = 51820`); flags override the file.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "portdistrictd",
    version,
    args_override_self = true,
    about = "The portdistrict control daemon: publishes this identity's records in DNS \
             (RFC 2136 + TSIG), reads its trusted peers' records and connects this device's \
             tunnel to every trusted device, every interval, until SIGTERM.",
    after_help = AFTER_HELP
)]
pub struct DaemonArgs {
    /// The directories.
    #[command(flatten)]
    pub dirs: crate::cli::DirArgs,
    /// A TOML file with these settings (default: /etc/portdistrict/portdistrictd.toml
    /// when it exists); flags override it
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Run one cycle, then exit
    #[arg(long)]
    pub once: bool,
    /// The DNS server that takes the updates (required)
    #[arg(long, value_name = "IP[:PORT]")]
    pub dns_server: Option<String>,
    /// The zone the records live in (required)
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    /// The TSIG key's name (required)
    #[arg(long, value_name = "NAME")]
    pub tsig_key: Option<String>,
    /// A file holding the TSIG secret in base64 (required)
    #[arg(long, value_name = "FILE")]
    pub tsig_secret_file: Option<String>,
    /// The resolver that reads peers' records (default: --dns-server)
    #[arg(long, value_name = "IP[:PORT]")]
    pub resolver: Option<String>,
    /// Unlock the identity with the passphrase on the first line of FILE
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<String>,
    /// The tunnel interface [default: pd0]
    #[arg(long, value_name = "NAME")]
    pub interface: Option<String>,
    /// This device's WireGuard UDP port [default: 51820]
    #[arg(long, value_name = "PORT")]
    pub listen_port: Option<String>,
    /// Endpoints to publish instead of the detected ones (repeatable)
    #[arg(long, value_name = "IP:PORT")]
    pub endpoint: Vec<String>,
    /// Time between cycles [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
    /// How long published records are valid (at least 10s; keep it well above
    /// --interval) [default: 1h]
    #[arg(long, value_name = "DURATION")]
    pub record_lifetime: Option<String>,
    /// A group whose members, besides root, may use RUN_DIR/portdistrictd.sock
    #[arg(long, value_name = "GROUP")]
    pub control_group: Option<String>,
    /// The NAT-traversal facilitator (`facilitator show` prints it)
    #[arg(long, value_name = "HOST:PORT:PUBLIC_KEY")]
    pub facilitator: Option<String>,
    /// Serve Prometheus metrics (cycles, peers, tunnels, records) on
    /// http://ADDR:PORT/metrics, e.g. 127.0.0.1:9587 (off by default; keep it private)
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Sync windows: how long primers go out before the punch
    #[arg(long, value_name = "DURATION", help_heading = "NAT traversal tuning")]
    pub primer: Option<String>,
    /// Sync windows: the primers' IP TTL (1 to 64)
    #[arg(long, value_name = "N", help_heading = "NAT traversal tuning")]
    pub primer_ttl: Option<String>,
    /// Sync windows: how long a punch lasts (at least 500ms)
    #[arg(long, value_name = "DURATION", help_heading = "NAT traversal tuning")]
    pub punch: Option<String>,
    /// Sync windows: how long to wait for the first window
    #[arg(long, value_name = "DURATION", help_heading = "NAT traversal tuning")]
    pub first_wait: Option<String>,
    /// Start this device's windows this much late (tests a clock behind the peer's)
    #[arg(long, value_name = "DURATION", help_heading = "NAT traversal tuning")]
    pub window_skew: Option<String>,
    /// The shortest wait after a failed window (at least 5s)
    #[arg(long, value_name = "DURATION", help_heading = "NAT traversal tuning")]
    pub window_backoff: Option<String>,
    /// Without a facilitator: one shared-secret window per this long [default: 60s]
    #[arg(long, value_name = "DURATION", help_heading = "NAT traversal tuning")]
    pub secret_windows_every: Option<String>,
}

/// The options a configuration file may set.
const KNOWN: &[&str] = &[
    "dns-server",
    "zone",
    "tsig-key",
    "tsig-secret-file",
    "resolver",
    "passphrase-file",
    "interface",
    "listen-port",
    "endpoint",
    "interval",
    "record-lifetime",
    "control-group",
    "facilitator",
    "metrics-listen",
    "primer",
    "primer-ttl",
    "punch",
    "first-wait",
    "window-skew",
    "window-backoff",
    "secret-windows-every",
];

/// What `--help` shows after the options.
const AFTER_HELP: &str = "\
A peer record that fails (altered, expired, unreachable, or older than one already \
seen: a rollback) keeps that peer's devices connected only until the last record that \
verified there expires. The TSIG key may be this device's own: it only updates \
_portdistrict.DEVICE.NAMESPACE, and on the device holding the identity's seed also \
_portdistrict.NAMESPACE and _portdistrict-trust.NAMESPACE.

Unless --once, it listens on RUN_DIR/portdistrictd.sock (mode 0660) for the CLI's \
peer, tunnel connect|disconnect and roster add|remove commands: root, or members of \
--control-group GROUP.

Exit status: 0 after SIGTERM (or one cycle with --once), 1 on failure, 2 for a usage error.";

/// Reads a TOML configuration file into option name -> values.
fn read_config(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not TOML", path.display()))?;
    let mut kv = BTreeMap::new();
    for (k, v) in table {
        let one = |v: &toml::Value| -> anyhow::Result<String> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                _ => bail!(
                    "{}: {k}: expected a string or a number (or a list of them for endpoint)",
                    path.display()
                ),
            }
        };
        let values = match &v {
            toml::Value::Array(a) => a.iter().map(one).collect::<anyhow::Result<Vec<_>>>()?,
            v => vec![one(v)?],
        };
        kv.insert(k, values);
    }
    Ok(kv)
}

/// The value of `key` in the configuration file `path`, when the file exists and sets
/// it (the first value of a list).
pub fn configured(path: &std::path::Path, key: &str) -> Option<String> {
    if !path.exists() {
        return None;
    }
    read_config(path).ok()?.remove(key)?.into_iter().next()
}

impl DaemonOptions {
    /// Parses the flags (without the program's name) as the command line would, with
    /// `--config FILE` read first; no default file.
    pub fn parse(args: &[&str]) -> anyhow::Result<DaemonOptions> {
        use clap::CommandFactory as _;
        let m = DaemonArgs::command()
            .no_binary_name(true)
            .try_get_matches_from(args)
            .map_err(|e| anyhow::anyhow!("{}", e.render().to_string().trim_end()))?;
        DaemonOptions::from_matches(&m, None)
    }

    /// The options clap matched, over the configuration file: `--config`, else
    /// `default_config` when that file exists. Flags override the file (a repeatable
    /// flag replaces the file's list).
    pub fn from_matches(
        m: &clap::ArgMatches,
        default_config: Option<&std::path::Path>,
    ) -> anyhow::Result<DaemonOptions> {
        use clap::parser::ValueSource;
        let config = m
            .get_one::<std::path::PathBuf>("config")
            .cloned()
            .or_else(|| default_config.filter(|p| p.exists()).map(Into::into));
        let mut kv = match &config {
            Some(path) => read_config(path)?,
            None => BTreeMap::new(),
        };
        let once = m.get_flag("once");
        let mut flags = Vec::new();
        for id in m.ids() {
            let id = id.as_str();
            // The settings only: not --config, --once, the directories, nor the
            // argument groups clap adds (a flattened struct's name).
            let key = id.replace('_', "-");
            if !KNOWN.contains(&key.as_str())
                || m.value_source(id) != Some(ValueSource::CommandLine)
            {
                continue;
            }
            for v in m.get_raw(id).into_iter().flatten() {
                let v = v
                    .to_str()
                    .with_context(|| format!("--{}: not UTF-8", id.replace('_', "-")))?;
                flags.push((id.replace('_', "-"), v.to_owned()));
            }
        }
        let mut seen_flag = std::collections::BTreeSet::new();
        for (k, v) in flags {
            if seen_flag.insert(k.clone()) {
                kv.insert(k.clone(), Vec::new());
            }
            kv.entry(k).or_default().push(v);
        }
        let one = |k: &str| kv.get(k).and_then(|v| v.last()).map(String::as_str);
        let need = |k: &str| {
            one(k).with_context(|| {
                format!("portdistrictd needs --{k} (or `{k} = \"...\"` in the configuration file)")
            })
        };

        if let Some(k) = kv.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            bail!("portdistrictd: unknown option {k}");
        }
        let secret_file = need("tsig-secret-file")?;
        let secret_text = std::fs::read_to_string(secret_file)
            .with_context(|| format!("reading the TSIG secret {secret_file}"))?;
        use base64::Engine as _;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret_text.trim())
            .with_context(|| format!("{secret_file}: the TSIG secret must be base64 (as in the server's key definition)"))?;
        let server = parse_addr(need("dns-server")?, 53, "--dns-server")?;
        let mut windows = portdistrict_control_core::nat::path::Settings::default();
        let ms = |k: &str, max: Duration| -> anyhow::Result<Option<Duration>> {
            one(k)
                .map(|v| parse_ms(v, max).with_context(|| format!("--{k}")))
                .transpose()
        };
        if let Some(d) = ms("primer", Duration::from_secs(10))? {
            windows.primer = d;
        }
        if let Some(d) = ms("punch", Duration::from_secs(30))? {
            if d < Duration::from_millis(500) {
                bail!("--punch: at least 500ms");
            }
            windows.punch = d;
        }
        if let Some(d) = ms("first-wait", Duration::from_secs(600))? {
            windows.first_wait = d;
        }
        if let Some(t) = one("primer-ttl") {
            windows.primer_ttl = t
                .parse()
                .ok()
                .filter(|t| (1..=64).contains(t))
                .with_context(|| format!("--primer-ttl {t}: 1 to 64"))?;
        }
        if let Some(d) = ms("window-backoff", Duration::from_secs(3600))? {
            if d < Duration::from_secs(5) {
                bail!("--window-backoff: at least 5s");
            }
            windows.backoff_min = d;
            windows.backoff_max = windows.backoff_max.max(d);
        }
        let window_skew = ms("window-skew", Duration::from_secs(60))?.unwrap_or_default();
        let secret_every = ms("secret-windows-every", Duration::from_secs(3600))?
            .unwrap_or(Duration::from_secs(60));
        let window_len = windows.primer + windows.punch;
        if secret_every < Duration::from_secs(10) || secret_every < window_len * 2 {
            bail!(
                "--secret-windows-every: at least 10s and twice a window (primer + punch = {}ms)",
                window_len.as_millis()
            );
        }
        let metrics_listen = one("metrics-listen")
            .map(|v| {
                v.parse::<SocketAddr>().map_err(|_| {
                    anyhow::anyhow!("--metrics-listen {v}: expected ADDR:PORT, like 127.0.0.1:9587")
                })
            })
            .transpose()?;
        Ok(DaemonOptions {
            metrics_listen,
            secret_every,
            facilitator: one("facilitator")
                .map(crate::facilitator::parse_facilitator)
                .transpose()?,
            windows,
            window_skew,
            control_group: one("control-group")
                .map(crate::ctl::parse_group)
                .transpose()?,
            dns: DnsConfig {
                server,
                zone: need("zone")?.trim_end_matches('.').to_owned(),
                key_name: need("tsig-key")?.to_owned(),
                secret,
                resolver: match one("resolver") {
                    Some(r) => parse_addr(r, 53, "--resolver")?,
                    None => server,
                },
            },
            secret: SecretOptions {
                passphrase_file: one("passphrase-file").map(Into::into),
                key_file: None,
            },
            interface: crate::ifname("--interface", one("interface").unwrap_or("pd0"))?,
            listen_port: match one("listen-port") {
                Some(p) => p
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .with_context(|| format!("--listen-port {p}: 1 to 65535"))?,
                None => 51820,
            },
            endpoints: kv
                .get("endpoint")
                .into_iter()
                .flatten()
                .map(|e| {
                    e.parse()
                        .with_context(|| format!("--endpoint {e}: expected IP:PORT"))
                })
                .collect::<anyhow::Result<_>>()?,
            interval: match one("interval") {
                Some(i) => crate::parse_duration(i, MAX_INTERVAL).context("--interval")?,
                None => Duration::from_secs(30),
            },
            record_lifetime: match one("record-lifetime") {
                Some(l) => {
                    let secs = crate::parse_duration(l, MAX_RECORD_LIFETIME)
                        .context("--record-lifetime")?
                        .as_secs();
                    if secs < MIN_RECORD_LIFETIME {
                        bail!("--record-lifetime {l}: at least {MIN_RECORD_LIFETIME}s");
                    }
                    secs
                }
                None => RECORD_LIFETIME,
            },
            once,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_given_twice_takes_the_last_and_lists_add_up() {
        let m = {
            use clap::CommandFactory as _;
            DaemonArgs::command()
                .no_binary_name(true)
                .try_get_matches_from([
                    "--interval",
                    "5s",
                    "--interval",
                    "6s",
                    "--endpoint",
                    "192.0.2.1:1",
                    "--endpoint",
                    "192.0.2.2:2",
                ])
                .unwrap()
        };
        assert_eq!(m.get_one::<String>("interval").unwrap(), "6s");
        assert_eq!(m.get_many::<String>("endpoint").unwrap().count(), 2);
    }

    #[test]
    fn every_flag_is_a_known_key() {
        use clap::CommandFactory as _;
        let cmd = DaemonArgs::command();
        let ids: Vec<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().as_str().replace('_', "-"))
            .filter(|id| {
                !matches!(
                    id.as_str(),
                    "config" | "once" | "state-dir" | "run-dir" | "help" | "version"
                )
            })
            .collect();
        let mut want: Vec<&str> = KNOWN.to_vec();
        want.sort_unstable();
        let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, want);
    }

    #[test]
    fn the_example_configuration_is_read() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/portdistrictd.toml");
        let kv = read_config(example.as_ref()).unwrap();
        for k in kv.keys() {
            assert!(KNOWN.contains(&k.as_str()), "{k}");
        }
        assert!(kv.contains_key("dns-server"));
    }

    #[test]
    fn options_from_flags_and_config() {
        let dir = std::env::temp_dir().join(format!("pd-daemon-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "c2VjcmV0\n").unwrap();
        let conf = dir.join("conf");
        std::fs::write(
            &conf,
            format!("# settings\ndns-server = \"192.0.2.53\"\nzone = \"pd.test.\"\ntsig-key = \"k\"\ntsig-secret-file = \"{}\"\ninterval = \"10s\"\nlisten-port = 51821\nendpoint = [\"192.0.2.7:51821\", \"192.0.2.8:51821\"]\n", secret.display()),
        )
        .unwrap();
        let o = DaemonOptions::parse(&[
            "--state-dir",
            "/tmp/x",
            "--config",
            &conf.to_string_lossy(),
            "--interval",
            "5s",
            "--once",
            "--run-dir=/tmp/y",
        ])
        .unwrap();
        assert_eq!(o.dns.server, "192.0.2.53:53".parse().unwrap());
        assert_eq!(o.dns.resolver, o.dns.server);
        assert_eq!(o.dns.zone, "pd.test");
        assert_eq!(o.dns.secret, b"secret");
        assert_eq!(o.interval, Duration::from_secs(5), "flags win");
        assert_eq!(o.listen_port, 51821, "a TOML integer");
        assert_eq!(o.endpoints.len(), 2, "a TOML list");
        assert!(o.once);
        assert_eq!(o.record_lifetime, RECORD_LIFETIME);
        assert_eq!(o.metrics_listen, None, "no endpoint unless asked");
        let c = conf.to_string_lossy();
        let o =
            DaemonOptions::parse(&["--config", &c, "--metrics-listen", "127.0.0.1:9587"]).unwrap();
        assert_eq!(o.metrics_listen, Some("127.0.0.1:9587".parse().unwrap()));
        let e = DaemonOptions::parse(&["--config", &c, "--metrics-listen", "9587"]).unwrap_err();
        assert!(e.to_string().contains("expected ADDR:PORT"), "{e}");
        let o = DaemonOptions::parse(&["--config", &c, "--record-lifetime", "20s"]).unwrap();
        assert_eq!(o.record_lifetime, 20);
        let e = DaemonOptions::parse(&["--config", &c, "--record-lifetime", "5s"]).unwrap_err();
        assert!(
            e.to_string().contains("--record-lifetime 5s: at least 10s"),
            "{e}"
        );
        let e = DaemonOptions::parse(&["--config", &conf.to_string_lossy(), "--bogus", "1"])
            .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "zone = [1, {a = 2}]\n").unwrap();
        let e = DaemonOptions::parse(&["--config", &bad.to_string_lossy()]).unwrap_err();
        assert!(
            format!("{e:#}").contains("zone: expected a string"),
            "{e:#}"
        );
        std::fs::write(&bad, "zone = pd.test\n").unwrap();
        let e = DaemonOptions::parse(&["--config", &bad.to_string_lossy()]).unwrap_err();
        assert!(format!("{e:#}").contains("not TOML"), "{e:#}");
        let e = DaemonOptions::parse(&[]).unwrap_err();
        assert!(e.to_string().contains("--tsig-secret-file"), "{e}");
        let c = conf.to_string_lossy();
        for (args, needle) in [
            (&["--config", &*c, "--interface", "pd*"][..], "wildcards"),
            (
                &["--config", &*c, "--interval", "99999999999999s"][..],
                "too long",
            ),
        ] {
            let e = DaemonOptions::parse(args).unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{args:?}: {e:#}");
        }
        let o = DaemonOptions::parse(&[
            "--config",
            &c,
            "--primer",
            "800ms",
            "--primer-ttl",
            "3",
            "--punch",
            "3s",
            "--window-skew",
            "300ms",
            "--facilitator",
            "203.0.113.1:7447:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        ])
        .unwrap();
        assert_eq!(o.windows.primer, Duration::from_millis(800));
        assert_eq!(o.windows.primer_ttl, 3);
        assert_eq!(o.windows.punch, Duration::from_secs(3));
        assert_eq!(o.window_skew, Duration::from_millis(300));
        assert_eq!(o.secret_every, Duration::from_secs(60), "the default");
        let (ep, key) = o.facilitator.unwrap();
        assert_eq!(ep, "203.0.113.1:7447".parse().unwrap());
        assert_eq!(key, portdistrict_wg::PublicKey([1; 32]));
        for (args, needle) in [
            (
                &["--config", &*c, "--primer-ttl", "0"][..],
                "--primer-ttl 0: 1 to 64",
            ),
            (&["--config", &*c, "--primer", "11s"][..], "too long"),
            (
                &["--config", &*c, "--facilitator", "203.0.113.1:7447"][..],
                "not a WireGuard public key",
            ),
            (&["--config", &*c, "--punch", "100ms"][..], "at least 500ms"),
            (
                &["--config", &*c, "--secret-windows-every", "5s"][..],
                "at least 10s",
            ),
            (
                &[
                    "--config",
                    &*c,
                    "--punch",
                    "20s",
                    "--secret-windows-every",
                    "30s",
                ][..],
                "twice a window",
            ),
        ] {
            let e = DaemonOptions::parse(args).unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{args:?}: {e:#}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
