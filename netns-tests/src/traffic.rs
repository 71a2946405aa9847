//! Traffic checks: ping (all replies, or none) and TCP transfers of seeded
//! pseudo-random bytes through `ncat`, with `sha256sum` on both ends.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::ChildGuard;
use crate::netns::Netns;
use crate::Family;
use portdistrict_testkit::wait_until;

/// How long the first ping may take to get through (covers the handshake).
const WARMUP: Duration = Duration::from_secs(15);

fn family_of(addr: IpAddr) -> Family {
    if addr.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

/// Runs `ping -c count` from `ns` (with source `src` if given) and returns how many
/// replies came back. Bounded: 0.2 s between probes, 1 s wait for the last reply.
pub fn ping_received(ns: &Netns, src: Option<IpAddr>, dst: IpAddr, count: u32) -> u32 {
    ping_with_wait(ns, src, dst, count, 1)
}

/// [`ping_received`] waiting `wait_secs` for the last reply.
fn ping_with_wait(ns: &Netns, src: Option<IpAddr>, dst: IpAddr, count: u32, wait_secs: u32) -> u32 {
    let (count_s, dst_s, wait_s) = (count.to_string(), dst.to_string(), wait_secs.to_string());
    let src_s = src.map(|s| s.to_string());
    let mut argv = vec![
        "ping", "-n", "-q", "-c", &count_s, "-i", "0.2", "-W", &wait_s,
    ];
    if let Some(src) = &src_s {
        argv.extend(["-I", src]);
    }
    argv.push(&dst_s);
    let out = ns.try_exec(&argv);
    let text = String::from_utf8_lossy(&out.stdout);
    parse_received(&text).unwrap_or_else(|| {
        panic!(
            "cannot parse ping output of {argv:?} in {}:\n{text}\n{}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `count` pings from `ns` to `dst`, one every `interval_ms` milliseconds (root
/// allows less than 200 ms), each waiting at most 1 s; returns how many came back.
pub fn ping_fast(ns: &Netns, dst: IpAddr, count: u32, interval_ms: u32) -> u32 {
    let interval = format!("{:.3}", f64::from(interval_ms) / 1000.0);
    let (count_s, dst_s) = (count.to_string(), dst.to_string());
    let argv = [
        "ping", "-n", "-q", "-c", &count_s, "-i", &interval, "-W", "1", &dst_s,
    ];
    let out = ns.try_exec(&argv);
    let text = String::from_utf8_lossy(&out.stdout);
    parse_received(&text).unwrap_or_else(|| {
        panic!(
            "cannot parse ping output of {argv:?} in {}:\n{text}\n{}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The `N received` count of ping's summary line.
fn parse_received(text: &str) -> Option<u32> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let field = line
        .split(',')
        .find(|f| f.trim_end().ends_with("received"))?;
    field.split_whitespace().next()?.parse().ok()
}

/// Waits (bounded) until one ping from `ns` to `dst` is answered, then asserts that
/// `count` of `count` pings are (allowing 2 s for the last reply, for loaded machines).
pub fn assert_ping(ns: &Netns, dst: IpAddr, count: u32) {
    let through = wait_until(WARMUP, Duration::from_millis(100), || {
        ping_received(ns, None, dst, 1) == 1
    });
    assert!(
        through,
        "no ping reply from {dst} in {} within {WARMUP:?}",
        ns.name()
    );
    let got = ping_with_wait(ns, None, dst, count, 2);
    assert_eq!(
        got,
        count,
        "ping {dst} from {}: {got}/{count} replies",
        ns.name()
    );
}

/// Asserts that none of `count` pings from `ns` (source `src` if given) to `dst` is
/// answered.
pub fn assert_no_ping(ns: &Netns, src: Option<IpAddr>, dst: IpAddr, count: u32) {
    let got = ping_received(ns, src, dst, count);
    assert_eq!(
        got,
        0,
        "ping {dst} from {} (src {src:?}) must fail: got {got}/{count} replies",
        ns.name()
    );
}

/// What a [`tcp_transfer`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferReport {
    /// Payload bytes sent (and received, checksums equal).
    pub bytes: u64,
    /// Wall time from connect to the receiver's exit.
    pub elapsed: Duration,
    /// The sha256 both ends computed.
    pub sha256: String,
}

impl TransferReport {
    /// Payload throughput in Mbit/s.
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends `megabytes` MiB of pseudo-random bytes (seeded with `seed`) over TCP from `from`
/// to `dst:port` in `to` with `ncat`, and asserts that `sha256sum` of what the receiver
/// got equals that of what was sent. Bounded to 30 s + 0.5 s per MiB.
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    dst: IpAddr,
    port: u16,
    megabytes: u64,
    seed: u64,
) -> TransferReport {
    let budget = Duration::from_secs(30) + Duration::from_millis(500) * megabytes as u32;
    let (flag, dst_s, port_s) = (family_of(dst).flag(), dst.to_string(), port.to_string());
    let mut receiver = ChildGuard::spawn(
        "ncat receiver",
        to.command(&["ncat", flag, "-l", "--recv-only", &dst_s, &port_s])
            .stdout(Stdio::piped()),
    );
    let received_out = receiver.child_mut().stdout.take().expect("piped");
    let mut recv_sum = ChildGuard::spawn(
        "receiver sha256sum",
        Command::new("sha256sum")
            .stdin(received_out)
            .stdout(Stdio::piped()),
    );
    let listening = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        !to.exec(&["ss", "-Hltn", &format!("sport = :{port}")])
            .trim()
            .is_empty()
    });
    assert!(
        listening,
        "ncat did not listen on {dst}:{port} in {}",
        to.name()
    );

    let start = Instant::now();
    let mut sender = ChildGuard::spawn(
        "ncat sender",
        from.command(&["ncat", flag, "--send-only", &dst_s, &port_s])
            .stdin(Stdio::piped()),
    );
    let mut send_sum = ChildGuard::spawn(
        "sender sha256sum",
        Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let net_in = sender.child_mut().stdin.take().expect("piped");
    let sum_in = send_sum.child_mut().stdin.take().expect("piped");
    let bytes = megabytes << 20;
    let writer = std::thread::spawn(move || write_stream(seed, bytes, net_in, sum_in));

    sender.expect_success_within(budget);
    receiver.expect_success_within(budget.saturating_sub(start.elapsed()));
    let elapsed = start.elapsed();
    writer
        .join()
        .expect("writer thread panicked")
        .unwrap_or_else(|e| panic!("feeding ncat failed: {e}"));
    let sent = digest(&mut send_sum);
    let got = digest(&mut recv_sum);
    assert_eq!(
        got, sent,
        "TCP payload to {dst}:{port} corrupted or truncated ({bytes} bytes sent)"
    );
    TransferReport {
        bytes,
        elapsed,
        sha256: sent,
    }
}

/// Writes `bytes` seeded pseudo-random bytes to both sinks, then closes them.
fn write_stream(
    seed: u64,
    bytes: u64,
    mut a: impl Write,
    mut b: impl Write,
) -> std::io::Result<()> {
    let mut rng = XorShift::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        a.write_all(&buf[..n])?;
        b.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn digest(sum: &mut ChildGuard) -> String {
    sum.expect_success_within(Duration::from_secs(30));
    let mut out = String::new();
    let stdout = sum.child_mut().stdout.as_mut().expect("piped");
    stdout
        .read_to_string(&mut out)
        .expect("read sha256sum output");
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

/// xorshift64*: fast, seeded, good enough to defeat compression and pattern luck.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// The `TcpExt` counters of `ns` (from its `/proc/net/netstat`) that say a TCP sender
/// saw its segments arrive out of order: `TCPSACKReorder`, `TCPTSReorder`,
/// `TCPRenoReorder` (named, for the failure message). A tunnel that keeps the packets
/// of a flow in order, between namespaces joined by one veth, leaves them at zero.
pub fn tcp_reordering(ns: &Netns) -> Vec<(String, u64)> {
    let text = ns.exec(&["cat", "/proc/net/netstat"]);
    let mut lines = text.lines();
    let mut out = Vec::new();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some(("TcpExt:", names)), Some(("TcpExt:", values))) =
            (names.split_once(' '), values.split_once(' '))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if matches!(name, "TCPSACKReorder" | "TCPTSReorder" | "TCPRenoReorder") {
                out.push((name.to_string(), value.parse().unwrap_or(u64::MAX)));
            }
        }
    }
    assert_eq!(out.len(), 3, "TcpExt reordering counters missing in {text}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summaries() {
        let ok = "--- 10.99.0.2 ping statistics ---\n5 packets transmitted, 5 received, 0% packet loss, time 801ms\n";
        assert_eq!(parse_received(ok), Some(5));
        let bad = "5 packets transmitted, 0 received, +5 errors, 100% packet loss, time 812ms\n";
        assert_eq!(parse_received(bad), Some(0));
        assert_eq!(
            parse_received("ping: connect: Network is unreachable\n"),
            None
        );
    }

    #[test]
    fn stream_is_seeded_and_exact_length() {
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        write_stream(7, 100_003, &mut a, &mut b).unwrap();
        assert_eq!(a.len(), 100_003);
        assert_eq!(a, b);
        write_stream(8, 100_003, &mut c, std::io::sink()).unwrap();
        assert_ne!(a, c, "different seeds give different streams");
        let zeros = a.iter().filter(|x| **x == 0).count();
        assert!(zeros < 1000, "{zeros} zero bytes: not random-looking");
    }
}
