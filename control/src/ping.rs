//! `portdistrict ping PEER|provider [--count N]`: is the tunnel there, and how fast.
//!
//! - `provider`: system mode's tunnel. The header shows the provider's endpoint and
//!   the last handshake; each probe is the consumer's in-tunnel exit request from its
//!   inner address to the provider (UDP 100.64.0.1:51821), whose answer only comes
//!   back through the tunnel: its round trip is the tunnel's.
//! - `PEER` (a tunnel name as `tunnel list` shows it, or its first label): a mesh
//!   tunnel of portdistrictd. The header shows the path (direct or relayed, the
//!   endpoint) and the last handshake; each probe is an ICMPv6 echo to the peer
//!   device's overlay address (its prefix, host 1).
//!
//! The result is like ping(8)'s: one line per probe and a summary; a ping with no
//! answer at all fails.

use crate::Dirs;
use anyhow::{bail, Context as _};
use std::fmt::Write as _;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The longest wait for one answer.
const WAIT: Duration = Duration::from_secs(1);
/// The time between probes.
const INTERVAL: Duration = Duration::from_millis(200);
/// The most probes one command sends.
pub const MAX_COUNT: u32 = 100;

/// One probe with a sequence number: its round trip, or `None` without an answer.
type Probe = Box<dyn FnMut(u16) -> anyhow::Result<Option<Duration>>>;

/// What a ping found: the text to print, and whether any probe was answered.
pub struct Pinged {
    /// ping(8)-like lines.
    pub text: String,
    /// At least one answer came back.
    pub answered: bool,
}

/// `ping TARGET --count N`.
pub fn ping(dirs: &Dirs, target: &str, count: u32) -> anyhow::Result<Pinged> {
    if count == 0 || count > MAX_COUNT {
        bail!("--count {count}: 1 to {MAX_COUNT}");
    }
    let (header, mut probe): (String, Probe) = if target == "provider" {
        let (header, mut p) = crate::consumer::provider_probe(dirs, WAIT)?;
        (header, Box::new(move |_| p()))
    } else {
        let (header, addr) = peer(dirs, target)?;
        let mut echo = Echo::new(addr)?;
        (header, Box::new(move |seq| echo.once(seq, WAIT)))
    };
    let mut text = header;
    let mut times = Vec::new();
    for seq in 1..=count {
        let started = Instant::now();
        match probe(u16::try_from(seq).unwrap_or(u16::MAX))? {
            Some(rtt) => {
                let _ = writeln!(text, "answer {seq}: {:.2} ms", ms(rtt));
                times.push(rtt);
            }
            None => {
                let _ = writeln!(text, "answer {seq}: none within {} s", WAIT.as_secs());
            }
        }
        if seq < count {
            std::thread::sleep(INTERVAL.saturating_sub(started.elapsed()));
        }
    }
    let _ = write!(text, "{count} sent, {} answered", times.len());
    if let (Some(min), Some(max)) = (times.iter().min(), times.iter().max()) {
        let n = u32::try_from(times.len()).unwrap_or(u32::MAX);
        let avg = times.iter().sum::<Duration>() / n;
        let _ = write!(
            text,
            ", round trip min/avg/max {:.2}/{:.2}/{:.2} ms",
            ms(*min),
            ms(avg),
            ms(*max)
        );
    }
    text.push('\n');
    Ok(Pinged {
        answered: !times.is_empty(),
        text,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The header and the overlay address of the mesh tunnel `name`.
fn peer(dirs: &Dirs, name: &str) -> anyhow::Result<(String, Ipv6Addr)> {
    let f = crate::tunnels::load(dirs).context(
        "no mesh tunnels here: `portdistrict ping provider` for system mode, or run portdistrictd",
    )?;
    let t = f.find(name)?;
    let prefix: Ipv6Addr = t
        .prefix
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("tunnel {}: its prefix {:?} is not IPv6", t.name, t.prefix))?;
    let addr = Ipv6Addr::from(u128::from(prefix) | 1);
    let live = crate::tunnels::live(&f.interface)
        .get(&t.wg_key)
        .cloned()
        .unwrap_or_default();
    // The daemon's view as of its last cycle; a handshake since then is direct unless
    // the daemon had put the tunnel on the relay.
    let path = match (t.path.as_ref().map(|p| p.path.as_str()), live.handshake) {
        (Some("relay"), _) => "relayed by the facilitator",
        (Some("direct"), _) | (_, 1..) => "direct",
        _ => "not established",
    };
    let endpoint = live
        .endpoint
        .or_else(|| t.endpoint.clone())
        .unwrap_or_else(|| "no endpoint".to_owned());
    let handshake = match live.handshake {
        0 => "no handshake yet".to_owned(),
        t => format!(
            "last handshake {}s ago",
            crate::exit::now().saturating_sub(t)
        ),
    };
    Ok((
        format!(
            "{} ({addr}) on {}: path {path} ({endpoint}), {handshake}\n",
            t.name, f.interface
        ),
        addr,
    ))
}

/// ICMPv6 echo on a raw socket connected to one address (the kernel fills in the
/// checksum and hands us only that source's messages).
struct Echo {
    sock: socket2::Socket,
    id: u16,
}

impl Echo {
    fn new(to: Ipv6Addr) -> anyhow::Result<Echo> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                anyhow::anyhow!(
                    "not root: an ICMPv6 echo needs a raw socket; run `sudo portdistrict ping ...` or give CAP_NET_RAW"
                )
            } else {
                anyhow::Error::new(e).context("an ICMPv6 socket")
            }
        })?;
        sock.connect(&SocketAddr::from((to, 0)).into())
            .with_context(|| format!("no route to {to}"))?;
        let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(0);
        Ok(Echo { sock, id })
    }

    /// One echo request with `seq`; the round trip of its reply, if one came back.
    fn once(&mut self, seq: u16, wait: Duration) -> anyhow::Result<Option<Duration>> {
        use std::io::Read as _;
        let request = echo_request(self.id, seq);
        let sent = Instant::now();
        self.sock.send(&request).context("sending an ICMPv6 echo")?;
        let mut buf = [0u8; 1500];
        loop {
            let left = wait.saturating_sub(sent.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            self.sock.set_read_timeout(Some(left))?;
            match (&self.sock).read(&mut buf) {
                Ok(n) if is_reply(&buf[..n], self.id, seq) => return Ok(Some(sent.elapsed())),
                Ok(_) => {}
                Err(e) if crate::nothing_arrived(&e) => {}
                Err(e) => return Err(e).context("receiving ICMPv6"),
            }
        }
    }
}

/// An ICMPv6 echo request (type 128) with a 16-byte payload; checksum left to the
/// kernel.
fn echo_request(id: u16, seq: u16) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0] = 128;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..24].copy_from_slice(b"portdistrict-pin");
    p
}

/// Whether `b` is the echo reply (type 129) to `id`, `seq`.
fn is_reply(b: &[u8], id: u16, seq: u16) -> bool {
    b.len() >= 8 && b[0] == 129 && b[4..6] == id.to_be_bytes() && b[6..8] == seq.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_messages() {
        let r = echo_request(0x1234, 7);
        assert_eq!(&r[..8], &[128, 0, 0, 0, 0x12, 0x34, 0, 7]);
        let mut reply = r;
        reply[0] = 129;
        assert!(is_reply(&reply, 0x1234, 7));
        assert!(!is_reply(&reply, 0x1234, 8));
        assert!(!is_reply(&r, 0x1234, 7), "our own request is no reply");
        assert!(!is_reply(&reply[..7], 0x1234, 7));
    }

    #[test]
    fn without_tunnels_ping_says_what_to_do() {
        let base = std::env::temp_dir().join(format!("pd-ping-{}", std::process::id()));
        let d = Dirs {
            state: base.join("s"),
            run: base.join("r"),
        };
        let e = ping(&d, "bob", 1).err().map(|e| format!("{e:#}")).unwrap();
        assert!(e.contains("no mesh tunnels here"), "{e}");
        let e = ping(&d, "provider", 1)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap();
        assert!(e.contains("system mode is not on"), "{e}");
        assert!(ping(&d, "bob", 0).is_err() && ping(&d, "bob", 101).is_err());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn the_overlay_is_reachable_through_loopback_echo() {
        // The echo machinery itself, against this machine's own ::1.
        let mut e = match Echo::new(Ipv6Addr::LOCALHOST) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("skipped: {e:#}");
                return;
            }
        };
        let rtt = e.once(1, Duration::from_secs(1)).unwrap();
        assert!(rtt.is_some(), "::1 answers echo");
    }
}
