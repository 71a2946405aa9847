//! The scale section: how much memory a daemon needs for [`PEERS`] peers, and how long
//! `wg setconf` takes to configure them.
//!
//! For each tunnel implementation: one namespace `pdb-<pid>-<impl>-s` with one daemon
//! (interface `pb<pid>-s<index>`), given a private key and a listen port and brought up;
//! its `VmRSS` and `VmHWM` (`/proc/<pid>/status`) are read with no peer; then a `wg
//! setconf` file with [`PEERS`] peers (random public keys, one IPv4 /32 and one IPv6
//! /128 AllowedIP and an endpoint each) is applied and timed, `wg show IF peers` must
//! list all of them, and the memory is read again. No packet is sent: no peer has a
//! keepalive, and nothing routes to the tunnel.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{tail, Error};
use crate::impls::Impl;
use crate::proc::{self, check_interrupt, cmd, run, Guard};
use crate::topo::{write_private, Daemon, Netns, TempDir, TUNNEL_MTU};

/// Peers configured on each daemon.
pub(crate) const PEERS: usize = 1000;
/// The daemon's listen port (inside its own namespace).
const LISTEN_PORT: &str = "51830";
/// Bound for `wg genkey`, `ip`, `wg show`.
const SHORT: Duration = Duration::from_secs(20);
/// Bound for `wg setconf` with [`PEERS`] peers.
const SETCONF: Duration = Duration::from_secs(60);
/// How often [`time_command`] looks at its child.
const TIMING_POLL: Duration = Duration::from_micros(200);
/// Pause before each memory reading, so a daemon's reaction to the last command
/// (threads, buffers) is included.
const SETTLE: Duration = Duration::from_millis(500);

/// A process's memory, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Memory {
    /// `VmRSS`: resident now, KiB.
    pub(crate) rss_kib: u64,
    /// `VmHWM`: the most it has been resident, KiB.
    pub(crate) hwm_kib: u64,
}

/// One implementation's scale figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ScaleSample {
    /// The implementation.
    pub(crate) implementation: &'static str,
    /// Peers configured (and listed back by `wg show`).
    pub(crate) peers: usize,
    /// With a private key and no peer.
    pub(crate) idle: Memory,
    /// After `wg setconf` with [`ScaleSample::peers`] peers.
    pub(crate) loaded: Memory,
    /// Wall time of that `wg setconf`, milliseconds.
    pub(crate) setconf_ms: f64,
}

impl ScaleSample {
    /// Resident memory added per configured peer, KiB (negative if it shrank).
    pub(crate) fn rss_kib_per_peer(&self) -> f64 {
        (self.loaded.rss_kib as f64 - self.idle.rss_kib as f64) / self.peers.max(1) as f64
    }
}

/// The `<field>:   1234 kB` value of a `/proc/<pid>/status`.
pub(crate) fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `VmRSS` and `VmHWM` of process `pid`.
fn memory(pid: u32) -> Result<Memory, Error> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        action: "cannot read",
        path: path.clone().into(),
        source,
    })?;
    match (status_kib(&text, "VmRSS"), status_kib(&text, "VmHWM")) {
        (Some(rss_kib), Some(hwm_kib)) => Ok(Memory { rss_kib, hwm_kib }),
        _ => Err(Error::Parse {
            what: path,
            problem: "no VmRSS or VmHWM line".to_owned(),
            text,
        }),
    }
}

/// Standard base64 with padding (the WireGuard key format).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A `wg setconf` file: `private_key` (base64), [`LISTEN_PORT`], and one peer per
/// 32 bytes of `public_keys`: peer `i` gets `10.200.x.y/32` and `fd77::x:y/128`
/// (x.y = `i` as two bytes) and endpoint `10.201.x.y:51820`.
pub(crate) fn config_text(private_key: &str, public_keys: &[u8]) -> String {
    let mut text = format!("[Interface]\nPrivateKey = {private_key}\nListenPort = {LISTEN_PORT}\n");
    for (i, key) in public_keys.chunks_exact(32).enumerate() {
        let (x, y) = ((i >> 8) & 0xff, i & 0xff);
        // Writing to a String cannot fail.
        let _ = write!(
            text,
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.200.{x}.{y}/32, fd77::{x:x}:{y:x}/128\n\
             Endpoint = 10.201.{x}.{y}:51820\n",
            base64(key)
        );
    }
    text
}

/// `n` bytes from `/dev/urandom`.
fn random_bytes(n: usize) -> Result<Vec<u8>, Error> {
    let path = Path::new("/dev/urandom");
    let mut bytes = vec![0u8; n];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| Error::Io {
            action: "cannot read",
            path: path.to_owned(),
            source,
        })?;
    Ok(bytes)
}

/// Runs the scale measurement of `implementation` (daemon `binary`); `index` makes
/// its interface name distinct.
pub(crate) fn measure(
    implementation: Impl,
    binary: &Path,
    index: usize,
) -> Result<ScaleSample, Error> {
    let pid = std::process::id();
    let base = format!("pdb-{pid}-{}-s", implementation.name());
    let files = TempDir::replacing(&base)?;
    let ns = Netns::new(&base)?;
    let ifname = format!("pb{pid}-s{index}");
    let log = files.path().join(format!("{ifname}.log"));
    let mut daemon = Daemon::start(&ns, implementation, binary, &ifname, log)?;
    let key_file = files.path().join("private.key");
    let private_key = run(&mut cmd(&["wg", "genkey"]), SHORT)?;
    write_private(&key_file, &private_key)?;
    let key_arg = key_file.to_string_lossy();
    daemon.wg(&[
        "set",
        &ifname,
        "listen-port",
        LISTEN_PORT,
        "private-key",
        &key_arg,
    ])?;
    ns.run(&["ip", "link", "set", &ifname, "mtu", TUNNEL_MTU, "up"])?;
    let idle = settled_memory(&mut daemon)?;

    let conf = files.path().join("peers.conf");
    let keys = random_bytes(32 * PEERS)?;
    write_private(&conf, &config_text(private_key.trim(), &keys))?;
    let conf_arg = conf.to_string_lossy();
    let setconf = time_command(&mut cmd(&["wg", "setconf", &ifname, &conf_arg]), SETCONF)?;
    let setconf_ms = setconf.as_secs_f64() * 1e3;
    let listed = daemon.wg(&["show", &ifname, "peers"])?.lines().count();
    if listed != PEERS {
        return Err(Error::Unexpected {
            what: format!("`wg show {ifname} peers` after setconf"),
            expected: format!("{PEERS} peers"),
            got: format!("{listed} peers"),
        });
    }
    let loaded = settled_memory(&mut daemon)?;
    Ok(ScaleSample {
        implementation: implementation.name(),
        peers: listed,
        idle,
        loaded,
        setconf_ms,
    })
}

/// Runs `c` and returns how long it took, to within [`TIMING_POLL`] (the harness's
/// usual waits poll every 40 ms, too coarse for this); fails unless it exits 0
/// within `limit`.
fn time_command(c: &mut Command, limit: Duration) -> Result<Duration, Error> {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = Guard::spawn_group(c)?;
    let status = loop {
        if let Some(status) = child.try_status() {
            break status;
        }
        check_interrupt()?;
        if start.elapsed() > limit {
            return Err(Error::Timeout {
                what: format!("`{}`", child.label()),
                limit,
            });
        }
        std::thread::sleep(TIMING_POLL);
    };
    let elapsed = start.elapsed();
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.child_mut().stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        return Err(Error::CommandFailed {
            command: child.label().to_owned(),
            status: status.to_string(),
            output: tail(&stderr, 2000),
        });
    }
    Ok(elapsed)
}

/// The daemon's memory after [`SETTLE`]; fails if it died.
fn settled_memory(daemon: &mut Daemon) -> Result<Memory, Error> {
    proc::sleep(SETTLE)?;
    daemon.check_alive()?;
    memory(daemon.pid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff; 3]), "////");
        let key = base64(&[0u8; 32]);
        assert_eq!(key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert_eq!(key.len(), 44, "a WireGuard key is 44 base64 characters");
    }

    #[test]
    fn config_has_one_section_per_key() {
        let mut keys = vec![0u8; 32 * 300];
        keys[32 * 299] = 0xfc;
        let text = config_text("PRIV", &keys);
        assert!(text.starts_with("[Interface]\nPrivateKey = PRIV\nListenPort = 51830\n"));
        assert_eq!(text.matches("[Peer]").count(), 300);
        assert!(text
            .contains("AllowedIPs = 10.200.0.0/32, fd77::0:0/128\nEndpoint = 10.201.0.0:51820\n"));
        assert!(text.contains(
            "[Peer]\nPublicKey = /AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\
             AllowedIPs = 10.200.1.43/32, fd77::1:2b/128\nEndpoint = 10.201.1.43:51820\n"
        ));
        for addr in text.lines().filter_map(|l| l.strip_prefix("AllowedIPs = ")) {
            let (v4, v6) = addr.split_once(", ").unwrap();
            let v6 = v6.strip_suffix("/128").unwrap();
            assert!(v6.parse::<std::net::Ipv6Addr>().is_ok(), "{v6}");
            assert!(v4
                .strip_suffix("/32")
                .unwrap()
                .parse::<std::net::Ipv4Addr>()
                .is_ok());
        }
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tx\nVmHWM:\t  5120 kB\nVmRSS:\t  4096 kB\nVmRSSx: 1 kB\n";
        assert_eq!(status_kib(s, "VmRSS"), Some(4096));
        assert_eq!(status_kib(s, "VmHWM"), Some(5120));
        assert_eq!(status_kib(s, "VmSwap"), None);
        let own = memory(std::process::id()).unwrap();
        assert!(own.rss_kib > 0 && own.hwm_kib >= own.rss_kib, "{own:?}");
    }

    #[test]
    fn per_peer_growth() {
        let s = ScaleSample {
            implementation: "x",
            peers: 1000,
            idle: Memory {
                rss_kib: 1000,
                hwm_kib: 1000,
            },
            loaded: Memory {
                rss_kib: 3000,
                hwm_kib: 3500,
            },
            setconf_ms: 1.0,
        };
        assert_eq!(s.rss_kib_per_peer(), 2.0);
    }

    #[test]
    fn command_timing() {
        let limit = Duration::from_secs(5);
        let d = time_command(&mut cmd(&["sleep", "0.3"]), limit).unwrap();
        assert!(
            d >= Duration::from_millis(300) && d < Duration::from_millis(330),
            "{d:?}"
        );
        let e = time_command(&mut cmd(&["sh", "-c", "echo nope >&2; exit 2"]), limit);
        assert!(e.unwrap_err().to_string().contains("nope"));
        let e = time_command(&mut cmd(&["sleep", "5"]), Duration::from_millis(100));
        assert!(matches!(e, Err(Error::Timeout { .. })));
    }
}
