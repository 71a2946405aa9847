//! The scenarios and how one run of a scenario is measured on a [`Topology`]: iperf3
//! (TCP 1 and 4 streams, UDP 1420- and 64-byte packets at full speed, 64-byte packets
//! at the highest rate carried with at most 1% loss), ping idle and under a TCP
//! stream, and the daemons' CPU time (`/proc/<pid>/stat`) around it.

use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;

use crate::error::{tail, Error};
use crate::proc::{self, capture, Guard};
use crate::topo::Topology;

const IPERF_PORT: &str = "5201";
/// Pings per latency sample, and their interval.
const PING_COUNT: &str = "50";
const PING_INTERVAL: &str = "0.01";
/// Slack on top of a run's nominal duration before it counts as hung.
const SLACK: Duration = Duration::from_secs(20);

/// One row of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Scenario {
    /// `iperf3 -P 1`.
    Tcp1,
    /// `iperf3 -P 4`.
    Tcp4,
    /// `iperf3 -u -b 0 -l 1392`: 1420-byte IP packets, the tunnel MTU.
    Udp1420,
    /// `iperf3 -u -b 0 -l 36`: 64-byte IP packets.
    Udp64,
    /// 64-byte IP packets at the highest offered rate delivered with at most
    /// [`MAX_LOSS_PERCENT`] loss (a search over offered rates, RFC 2544 style): the
    /// packet rate the tunnel carries, without the generator's excess competing for
    /// the CPUs as in [`Scenario::Udp64`].
    Udp64LowLoss,
    /// `ping -c 50 -i 0.01` on an idle tunnel.
    PingIdle,
    /// The same ping during a single TCP stream.
    PingLoaded,
    /// `iperf3 -P 1` while a third namespace floods the right node's WireGuard port
    /// with malformed datagrams and MAC1-valid handshake initiations from 256
    /// spoofed sources (`pd-flood`).
    Tcp1Flood,
}

impl Scenario {
    /// Every scenario, in row order.
    pub(crate) const ALL: [Scenario; 8] = [
        Scenario::Tcp1,
        Scenario::Tcp4,
        Scenario::Udp1420,
        Scenario::Udp64,
        Scenario::Udp64LowLoss,
        Scenario::PingIdle,
        Scenario::PingLoaded,
        Scenario::Tcp1Flood,
    ];

    /// Machine-readable id.
    pub(crate) fn id(self) -> &'static str {
        match self {
            Scenario::Tcp1 => "tcp_1_stream",
            Scenario::Tcp4 => "tcp_4_streams",
            Scenario::Udp1420 => "udp_1420_pps",
            Scenario::Udp64 => "udp_64_pps",
            Scenario::Udp64LowLoss => "udp_64_pps_low_loss",
            Scenario::PingIdle => "ping_idle",
            Scenario::PingLoaded => "ping_loaded",
            Scenario::Tcp1Flood => "tcp_1_stream_flood",
        }
    }

    /// Human label for tables and the chart.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Scenario::Tcp1 => "TCP 1 stream",
            Scenario::Tcp4 => "TCP 4 streams",
            Scenario::Udp1420 => "UDP 1420 B",
            Scenario::Udp64 => "UDP 64 B",
            Scenario::Udp64LowLoss => "UDP 64 B, loss <= 1%",
            Scenario::PingIdle => "ping idle",
            Scenario::PingLoaded => "ping loaded",
            Scenario::Tcp1Flood => "TCP 1 stream, flooded",
        }
    }

    /// The unit of [`Sample::value`].
    pub(crate) fn unit(self) -> &'static str {
        match self {
            Scenario::Tcp1 | Scenario::Tcp4 | Scenario::Tcp1Flood => "Gbit/s",
            Scenario::Udp1420 | Scenario::Udp64 | Scenario::Udp64LowLoss => "kpps",
            Scenario::PingIdle | Scenario::PingLoaded => "ms",
        }
    }

    /// Whether a bigger value is better (throughput) or worse (latency).
    pub(crate) fn higher_is_better(self) -> bool {
        !matches!(self, Scenario::PingIdle | Scenario::PingLoaded)
    }
}

/// What one run of one scenario measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Sample {
    /// In [`Scenario::unit`]: Gbit/s received, thousand packets/s received, or the
    /// median round-trip time in ms.
    pub(crate) value: f64,
    /// Payload bytes the receiver got (0 for ping).
    pub(crate) bytes: u64,
    /// UDP: datagrams lost, percent (receiver side).
    pub(crate) loss_percent: Option<f64>,
    /// TCP: segments the sender retransmitted (iperf3's `retransmits`; in a tunnel
    /// between two namespaces nothing is lost, so these come from reordering).
    pub(crate) retransmits: Option<f64>,
    /// User + system CPU seconds of both daemons during the run (tunnels only).
    pub(crate) cpu_seconds: Option<f64>,
}

impl Sample {
    /// Daemon CPU seconds per GB (1e9 bytes) delivered, when both are known and nonzero.
    pub(crate) fn cpu_per_gb(&self) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        (self.bytes > 0).then(|| cpu / (self.bytes as f64 / 1e9))
    }
}

/// Runs `scenario` for `secs` seconds on `topo`.
pub(crate) fn run(topo: &mut Topology, scenario: Scenario, secs: u32) -> Result<Sample, Error> {
    topo.check_alive()?;
    let before = cpu_seconds(topo)?;
    let mut sample = match scenario {
        Scenario::Tcp1 => tcp(topo, secs, "1")?,
        Scenario::Tcp4 => tcp(topo, secs, "4")?,
        Scenario::Udp1420 => udp(topo, secs, "1392")?,
        Scenario::Udp64 => udp(topo, secs, "36")?,
        Scenario::Udp64LowLoss => udp_low_loss(topo, secs, 36)?,
        Scenario::PingIdle => ping(topo)?,
        Scenario::PingLoaded => ping_loaded(topo, secs)?,
        Scenario::Tcp1Flood => tcp_flood(topo, secs)?,
    };
    topo.check_alive()?;
    let after = cpu_seconds(topo)?;
    if sample.cpu_seconds.is_none() {
        sample.cpu_seconds = before.zip(after).map(|(b, a)| a - b);
    }
    Ok(sample)
}

/// iperf3's UDP socket buffers (`-w`, both ends). With the default 208 KiB the
/// receiving iperf3 itself drops datagrams whenever it is scheduled out for a
/// millisecond at a few hundred thousand packets/s (seen as drops on its socket in
/// `ss -uam`, not in any tunnel): the tool, not the tunnel, would set the figure.
const UDP_SOCKET_BUFFER: &str = "4M";

/// Loss at or below which an offered rate counts as carried.
pub(crate) const MAX_LOSS_PERCENT: f64 = 1.0;
/// The offered rates [`Scenario::Udp64LowLoss`] searches between, packets/s.
const SEARCH_PPS: (f64, f64) = (10e3, 2e6);
/// Trials of the search (bisection in log space: the last step is ~4% of the rate).
const SEARCH_STEPS: u32 = 7;

/// The next offered rate to try, given the highest carried and lowest not carried.
pub(crate) fn next_rate(lo: f64, hi: f64) -> f64 {
    (lo * hi).sqrt()
}

/// Bisects the offered rate of `len`-byte UDP payloads; each trial lasts a quarter of
/// `secs` (at least 1 s). The sample is the best trial within [`MAX_LOSS_PERCENT`]
/// loss, with the daemons' CPU time of that trial; 0 if even the lowest rate lost
/// more.
fn udp_low_loss(topo: &Topology, secs: u32, len: u32) -> Result<Sample, Error> {
    let trial = secs.div_ceil(4).max(1);
    let len_arg = len.to_string();
    let (mut lo, mut hi) = SEARCH_PPS;
    let mut best: Option<Sample> = None;
    for _ in 0..SEARCH_STEPS {
        let rate = next_rate(lo, hi);
        let bits = format!("{}", (rate * f64::from(len) * 8.0) as u64);
        let before = cpu_seconds(topo)?;
        let json = iperf(
            topo,
            trial,
            &["-u", "-w", UDP_SOCKET_BUFFER, "-b", &bits, "-l", &len_arg],
        )?;
        let after = cpu_seconds(topo)?;
        let r = parse_iperf(&json, true)?;
        if r.lost_percent > MAX_LOSS_PERCENT {
            hi = rate;
            continue;
        }
        lo = rate;
        let sample = Sample {
            value: r.packets_per_second / 1e3,
            bytes: r.bytes,
            loss_percent: Some(r.lost_percent),
            retransmits: None,
            cpu_seconds: before.zip(after).map(|(b, a)| a - b),
        };
        if best.as_ref().is_none_or(|b| sample.value > b.value) {
            best = Some(sample);
        }
    }
    Ok(best.unwrap_or(Sample {
        value: 0.0,
        bytes: 0,
        loss_percent: None,
        retransmits: None,
        cpu_seconds: None,
    }))
}

/// `pd-flood`, built next to pd-bench (same package).
fn flood_binary() -> Result<std::path::PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        action: "cannot locate",
        path: "/proc/self/exe".into(),
        source,
    })?;
    let flood = exe.with_file_name("pd-flood");
    if flood.is_file() {
        Ok(flood)
    } else {
        Err(Error::MissingProgram {
            program: flood.display().to_string(),
            hint: "build it with `cargo build --release -p pd-bench`".to_owned(),
        })
    }
}

/// One TCP stream while the attacker floods the right node's WireGuard port for the
/// whole run (malformed datagrams, and one MAC1-valid initiation from one of 256
/// spoofed sources per 16 of them).
fn tcp_flood(topo: &Topology, secs: u32) -> Result<Sample, Error> {
    let flood = flood_binary()?;
    let seconds = (secs + 1).to_string();
    let flood_s = flood.to_string_lossy().into_owned();
    let mut argv = vec![
        flood_s.as_str(),
        "--to",
        &topo.flood_target,
        "--malformed",
        "1",
        "--initiations",
        "1",
        "--init-every",
        "16",
        "--sources",
        "256",
        "--spoof-net",
        crate::topo::SPOOF_NET,
        "--min-seconds",
        &seconds,
    ];
    if let Some(key) = &topo.right_public {
        argv.extend(["--public-key", key]);
    }
    let mut c = topo.attacker.command(&argv);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut attacker = Guard::spawn_group(&mut c)?;
    std::thread::sleep(Duration::from_millis(300));
    let sample = tcp(topo, secs, "1");
    // Bounded: it stops by itself a second after the stream; killed on drop otherwise.
    let _ = proc::wait_for(Duration::from_secs(5), || {
        Ok(attacker.try_status().is_some())
    });
    sample
}

fn tcp(topo: &Topology, secs: u32, streams: &str) -> Result<Sample, Error> {
    let json = iperf(topo, secs, &["-P", streams])?;
    let r = parse_iperf(&json, false)?;
    Ok(Sample {
        value: r.bits_per_second / 1e9,
        bytes: r.bytes,
        loss_percent: None,
        retransmits: r.retransmits.map(|n| n as f64),
        cpu_seconds: None,
    })
}

fn udp(topo: &Topology, secs: u32, len: &str) -> Result<Sample, Error> {
    let json = iperf(
        topo,
        secs,
        &["-u", "-w", UDP_SOCKET_BUFFER, "-b", "0", "-l", len],
    )?;
    let r = parse_iperf(&json, true)?;
    Ok(Sample {
        value: r.packets_per_second / 1e3,
        bytes: r.bytes,
        loss_percent: Some(r.lost_percent),
        retransmits: None,
        cpu_seconds: None,
    })
}

/// Starts a one-shot iperf3 server on the right and waits until it listens.
fn iperf_server(topo: &Topology) -> Result<Guard, Error> {
    let mut c = topo
        .right
        .command(&["iperf3", "-s", "-1", "-B", topo.target, "-p", IPERF_PORT]);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = Guard::spawn_group(&mut c)?;
    let filter = format!("sport = :{IPERF_PORT}");
    let listening = proc::wait_for(Duration::from_secs(5), || {
        Ok(!topo.right.run(&["ss", "-Hltn", &filter])?.trim().is_empty())
    })?;
    if !listening {
        return Err(Error::Timeout {
            what: format!(
                "iperf3 server listening on {} in {}",
                topo.target,
                topo.right.name()
            ),
            limit: Duration::from_secs(5),
        });
    }
    Ok(server)
}

/// Starts the iperf3 client on the left (stdout piped); the caller collects it.
fn iperf_client(topo: &Topology, secs: u32, extra: &[&str]) -> Result<Guard, Error> {
    let secs = secs.to_string();
    let mut argv = vec![
        "iperf3",
        "-c",
        topo.target,
        "-p",
        IPERF_PORT,
        "-t",
        &secs,
        "-J",
    ];
    argv.extend_from_slice(extra);
    let mut c = topo.left.command(&argv);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(Guard::spawn_group(&mut c)?)
}

/// One client run against a fresh server; returns the client's JSON.
fn iperf(topo: &Topology, secs: u32, extra: &[&str]) -> Result<String, Error> {
    let _server = iperf_server(topo)?;
    let mut client = iperf_client(topo, secs, extra)?;
    let out = client.collect(Duration::from_secs(secs.into()) + SLACK)?;
    // iperf3 -J reports its own errors inside the JSON; parse_iperf surfaces them.
    if !out.status.success() && !out.stdout.contains("\"error\"") {
        return Err(out.failure(client.label().to_owned()).into());
    }
    Ok(out.stdout)
}

/// The receiver-side figures of an iperf3 `-J` report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IperfReport {
    /// Bits per second received.
    pub(crate) bits_per_second: f64,
    /// Bytes received.
    pub(crate) bytes: u64,
    /// UDP: datagrams received per second (0 for TCP).
    pub(crate) packets_per_second: f64,
    /// UDP: datagrams lost, percent (0 for TCP).
    pub(crate) lost_percent: f64,
    /// TCP: the sender's retransmitted segments (`end.sum_sent.retransmits`), where
    /// iperf3 reports them.
    pub(crate) retransmits: Option<u64>,
}

/// Parses iperf3 `-J` output; `end.sum_received` holds the receiver's view. For UDP its
/// `packets` counts the sequence numbers expected and `lost_packets` the missing ones.
pub(crate) fn parse_iperf(json: &str, udp: bool) -> Result<IperfReport, Error> {
    let bad = |problem: String| Error::Parse {
        what: "iperf3 JSON".to_owned(),
        problem,
        text: tail(json, 1500),
    };
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(format!("not JSON: {e}")))?;
    if let Some(err) = v.get("error") {
        return Err(bad(format!("iperf3 reported an error: {err}")));
    }
    let sum = &v["end"]["sum_received"];
    let num = |key: &str| {
        sum[key]
            .as_f64()
            .ok_or_else(|| bad(format!("no end.sum_received.{key}")))
    };
    let mut report = IperfReport {
        bits_per_second: num("bits_per_second")?,
        bytes: num("bytes")? as u64,
        packets_per_second: 0.0,
        lost_percent: 0.0,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64(),
    };
    if udp {
        let seconds = num("seconds")?;
        if seconds <= 0.0 {
            return Err(bad("receiver ran for 0 seconds".to_owned()));
        }
        let received = (num("packets")? - num("lost_packets")?).max(0.0);
        report.packets_per_second = received / seconds;
        report.lost_percent = num("lost_percent")?;
    }
    Ok(report)
}

/// Runs the latency ping from left to right and returns its median RTT.
fn ping_once(topo: &Topology) -> Result<f64, Error> {
    let argv = [
        "ping",
        "-n",
        "-c",
        PING_COUNT,
        "-i",
        PING_INTERVAL,
        "-w",
        "15",
        topo.target,
    ];
    let out = capture(&mut topo.left.command(&argv), SHORT_PING)?;
    let rtts = parse_ping(&out.stdout);
    crate::stats::median(&rtts).ok_or_else(|| Error::Parse {
        what: "ping output".to_owned(),
        problem: "no replies".to_owned(),
        text: tail(&format!("{}{}", out.stdout, out.stderr), 1500),
    })
}

const SHORT_PING: Duration = Duration::from_secs(30);

fn ping(topo: &Topology) -> Result<Sample, Error> {
    Ok(Sample {
        value: ping_once(topo)?,
        bytes: 0,
        loss_percent: None,
        retransmits: None,
        cpu_seconds: None,
    })
}

/// The ping during a single TCP stream of `secs.clamp(2, 3)` seconds (the ping takes
/// half a second and starts half a second into the stream).
fn ping_loaded(topo: &Topology, secs: u32) -> Result<Sample, Error> {
    let load = secs.clamp(2, 3);
    let _server = iperf_server(topo)?;
    let mut client = iperf_client(topo, load, &["-P", "1"])?;
    proc::sleep(Duration::from_millis(500))?;
    let rtt = ping_once(topo)?;
    let out = client.collect(Duration::from_secs(load.into()) + SLACK)?;
    let report = parse_iperf(&out.stdout, false)?;
    Ok(Sample {
        value: rtt,
        bytes: report.bytes,
        loss_percent: None,
        retransmits: None,
        cpu_seconds: None,
    })
}

/// Round-trip times in ms from ping's reply lines (`... time=0.053 ms`).
pub(crate) fn parse_ping(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| {
            l.split_once("time=")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Summed user + system CPU seconds of the topology's daemons (`None` without daemons).
fn cpu_seconds(topo: &Topology) -> Result<Option<f64>, Error> {
    if topo.daemons.is_empty() {
        return Ok(None);
    }
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for d in &topo.daemons {
        let path = format!("/proc/{}/stat", d.pid());
        let text = read_proc(&path)?;
        let t = parse_stat_ticks(&text).ok_or_else(|| Error::Parse {
            what: path.clone(),
            problem: "no utime/stime fields".to_owned(),
            text: text.clone(),
        })?;
        total += t as f64 / ticks;
    }
    Ok(Some(total))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks.
pub(crate) fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: skip to the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Peak resident set (`VmHWM`, KiB) of each daemon of `topo`.
pub(crate) fn peak_rss_kib(topo: &Topology) -> Result<Vec<u64>, Error> {
    topo.daemons
        .iter()
        .map(|d| {
            let path = format!("/proc/{}/status", d.pid());
            let text = read_proc(&path)?;
            parse_vm_hwm(&text).ok_or_else(|| Error::Parse {
                what: path,
                problem: "no VmHWM line".to_owned(),
                text,
            })
        })
        .collect()
}

/// The `VmHWM:   1234 kB` value of a `/proc/<pid>/status`.
pub(crate) fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn read_proc(path: &str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        action: "cannot read",
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: &str = r#"{"end":{"sum_received":{"seconds":2.0,"bytes":1756656,
        "bits_per_second":1.3e7,"packets":325147,"lost_packets":276351,"lost_percent":83.87}}}"#;

    #[test]
    fn rate_search_bisects_in_log_space() {
        let (lo, hi) = SEARCH_PPS;
        let first = next_rate(lo, hi);
        assert!((first - (lo * hi).sqrt()).abs() < 1e-6);
        assert!(lo < first && first < hi);
        // After every step the bracket's ratio is square-rooted: 200 -> ~1.04.
        let mut ratio = hi / lo;
        for _ in 0..SEARCH_STEPS {
            ratio = ratio.sqrt();
        }
        assert!(ratio < 1.05, "{ratio}");
    }

    #[test]
    fn udp_counts_received_packets_only() {
        let r = parse_iperf(UDP, true).unwrap();
        assert_eq!(r.packets_per_second, (325147.0 - 276351.0) / 2.0);
        assert_eq!(r.bytes, 1756656);
        assert_eq!(r.lost_percent, 83.87);
    }

    #[test]
    fn tcp_uses_the_receiver() {
        let j = r#"{"end":{"sum_sent":{"bits_per_second":9e9,"bytes":9,"retransmits":1139},
            "sum_received":{"bits_per_second":2.5e9,"bytes":1500000000}}}"#;
        let r = parse_iperf(j, false).unwrap();
        assert_eq!((r.bits_per_second, r.bytes), (2.5e9, 1_500_000_000));
        assert_eq!(r.retransmits, Some(1139), "the sender's retransmissions");
        let without = r#"{"end":{"sum_received":{"bits_per_second":1,"bytes":1}}}"#;
        assert_eq!(parse_iperf(without, false).unwrap().retransmits, None);
    }

    #[test]
    fn iperf_errors_surface() {
        let e = parse_iperf(r#"{"error":"unable to connect"}"#, false).unwrap_err();
        assert!(e.to_string().contains("unable to connect"), "{e}");
        assert!(parse_iperf("garbage", false).is_err());
        assert!(parse_iperf(r#"{"end":{}}"#, false).is_err());
    }

    #[test]
    fn ping_lines() {
        let text = "PING 10.99.0.2 (10.99.0.2) 56(84) bytes of data.\n\
            64 bytes from 10.99.0.2: icmp_seq=1 ttl=64 time=0.037 ms\n\
            64 bytes from 10.99.0.2: icmp_seq=2 ttl=64 time=1.5 ms\n\
            rtt min/avg/max/mdev = 0.037/0.049/0.054/0.006 ms\n";
        assert_eq!(parse_ping(text), [0.037, 1.5]);
    }

    #[test]
    fn stat_and_status() {
        let stat = "42 (we ird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat_ticks(&own).is_some());
        assert_eq!(
            parse_vm_hwm("Name:\tx\nVmHWM:\t  5120 kB\nVmRSS: 1 kB\n"),
            Some(5120)
        );
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(parse_vm_hwm(&own).unwrap() > 0);
    }

    #[test]
    fn cpu_per_gb() {
        let s = Sample {
            value: 1.0,
            bytes: 2_000_000_000,
            loss_percent: None,
            retransmits: None,
            cpu_seconds: Some(3.0),
        };
        assert_eq!(s.cpu_per_gb(), Some(1.5));
        assert_eq!(
            Sample {
                bytes: 0,
                ..s.clone()
            }
            .cpu_per_gb(),
            None
        );
        assert_eq!(
            Sample {
                cpu_seconds: None,
                ..s
            }
            .cpu_per_gb(),
            None
        );
    }
}
