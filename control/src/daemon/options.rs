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

impl DaemonOptions {
    /// Parses the flags; `--config FILE` reads `key = value` lines with the same
    /// names (without `--`) first, flags override them.
    pub fn parse(args: &[&str]) -> anyhow::Result<DaemonOptions> {
        let mut kv: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut flags = Vec::new();
        let mut it = args.iter();
        let mut once = false;
        while let Some(&a) = it.next() {
            if a == "--once" {
                once = true;
                continue;
            }
            let key = a
                .strip_prefix("--")
                .with_context(|| format!("unexpected argument {a:?}"))?;
            let v = *it.next().with_context(|| format!("{a} needs a value"))?;
            if key == "config" {
                let text = std::fs::read_to_string(v).with_context(|| format!("reading {v}"))?;
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let (k, val) = line
                        .split_once('=')
                        .with_context(|| format!("{v}:{}: expected key = value", n + 1))?;
                    kv.entry(k.trim().to_owned())
                        .or_default()
                        .push(val.trim().to_owned());
                }
            } else {
                flags.push((key.to_owned(), v.to_owned()));
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
            one(k)
                .with_context(|| format!("portdistrictd needs --{k} (or `{k} = ...` in --config)"))
        };
        let known = [
            "dns-server",
            "zone",
            "tsig-key",
            "tsig-secret-file",
            "resolver",
            "passphrase-file",
            "key-file",
            "interface",
            "listen-port",
            "endpoint",
            "interval",
            "record-lifetime",
            "control-group",
            "facilitator",
            "primer",
            "primer-ttl",
            "punch",
            "first-wait",
            "window-skew",
            "window-backoff",
            "secret-windows-every",
        ];
        if let Some(k) = kv.keys().find(|k| !known.contains(&k.as_str())) {
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
        Ok(DaemonOptions {
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
    fn options_from_flags_and_config() {
        let dir = std::env::temp_dir().join(format!("pd-daemon-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "c2VjcmV0\n").unwrap();
        let conf = dir.join("conf");
        std::fs::write(
            &conf,
            format!("# settings\ndns-server = 192.0.2.53\nzone = pd.test.\ntsig-key = k\ntsig-secret-file = {}\ninterval = 10s\n", secret.display()),
        )
        .unwrap();
        let o = DaemonOptions::parse(&[
            "--config",
            &conf.to_string_lossy(),
            "--interval",
            "5s",
            "--once",
        ])
        .unwrap();
        assert_eq!(o.dns.server, "192.0.2.53:53".parse().unwrap());
        assert_eq!(o.dns.resolver, o.dns.server);
        assert_eq!(o.dns.zone, "pd.test");
        assert_eq!(o.dns.secret, b"secret");
        assert_eq!(o.interval, Duration::from_secs(5), "flags win");
        assert!(o.once);
        assert_eq!(o.record_lifetime, RECORD_LIFETIME);
        let c = conf.to_string_lossy();
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
