//! `cargo xtask demo`: two network namespaces joined by a veth pair, a
//! `portdistrict-dataplane` in each, configured with plain `wg`; then ping both ways
//! over IPv4 and IPv6 inside the tunnel, a 3-second iperf3 TCP run through the tunnel
//! and the same over the bare veth for comparison. Then an exit node
//! ([`crate::demo_exit`]). Everything it creates is owned by
//! a guard (see `guards`), so nothing is left behind on any exit path.

use crate::guards::{Background, Dataplane, Netns, TempDir};
use crate::proc::{check_interrupt, interrupted, output, require_root, run_streamed, POLL};
use crate::setup::{self, Needs};
use anyhow::{bail, Context as _, Result};
use std::path::Path;
use std::time::{Duration, Instant};

const LISTEN_PORT: &str = "51820";
const IPERF_PORT: &str = "5201";
const IPERF_SECONDS: &str = "3";
const UNDERLAY: [&str; 2] = ["10.77.0.1", "10.77.0.2"];
const TUNNEL_V4: [&str; 2] = ["10.99.0.1", "10.99.0.2"];
const TUNNEL_V6: [&str; 2] = ["fd99::1", "fd99::2"];
const SHORT: Duration = Duration::from_secs(20);
const IPERF_LIMIT: Duration = Duration::from_secs(30);
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The names of everything the demo creates, unique per process.
#[derive(Debug, PartialEq, Eq)]
struct Names {
    netns: [String; 2],
    ifname: [String; 2],
    veth: [String; 2],
}

impl Names {
    fn new(pid: u32) -> Self {
        let n = pid % 1000;
        Names {
            netns: [format!("pd-demo-{pid}-a"), format!("pd-demo-{pid}-b")],
            ifname: [format!("pdd{n}a"), format!("pdd{n}b")],
            veth: [format!("pdv{n}a"), format!("pdv{n}b")],
        }
    }
}

/// Runs the demo: a tunnel between two dataplanes, then an exit node.
pub(crate) fn run() -> Result<()> {
    require_root("demo")?;
    setup::run(Needs::APT_ONLY)?;
    println!("demo: cargo build --release -p portdistrict-dataplane -p portdistrict-control");
    let mut build = crate::cargo(&[
        "build",
        "--release",
        "-p",
        "portdistrict-dataplane",
        "-p",
        "portdistrict-control",
    ]);
    run_streamed(&mut build, BUILD_LIMIT)?;
    let bin_dir = crate::target_dir().join("release");
    pair(&bin_dir.join("portdistrict-dataplane"))?;
    crate::demo_exit::run(&bin_dir)?;
    println!("demo: done; everything it created is removed");
    Ok(())
}

/// Two dataplanes configured with `wg`: pings and iperf3 through the tunnel.
fn pair(binary: &Path) -> Result<()> {
    let pid = std::process::id();
    let names = Names::new(pid);
    let tmp = TempDir::new(&format!("pd-demo-{pid}"))?;
    let ns = [Netns::new(&names.netns[0])?, Netns::new(&names.netns[1])?];
    underlay(&ns, &names)?;
    let dp = [
        Dataplane::start(&ns[0], binary, &names.ifname[0], tmp.path().join("a.log"))?,
        Dataplane::start(&ns[1], binary, &names.ifname[1], tmp.path().join("b.log"))?,
    ];
    println!(
        "demo: {} in {} and {} in {} are running",
        names.ifname[0], names.netns[0], names.ifname[1], names.netns[1]
    );
    let result = configure(&ns, &dp, &tmp).and_then(|()| traffic(&ns, &dp, binary));
    if result.is_err() && !interrupted() {
        eprintln!("{}", logs(&dp));
    }
    result
}

fn logs(dp: &[Dataplane; 2]) -> String {
    dp.iter()
        .map(|d| format!("log of {}:\n{}", d.ifname(), d.log_text()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The veth pair between the namespaces, with the underlay addresses.
fn underlay(ns: &[Netns; 2], names: &Names) -> Result<()> {
    let [va, vb] = [&names.veth[0], &names.veth[1]];
    let mut add = crate::proc::cmd(&[
        "ip",
        "link",
        "add",
        va,
        "netns",
        ns[0].name(),
        "type",
        "veth",
    ]);
    add.args(["peer", "name", vb, "netns", ns[1].name()]);
    output(&mut add, SHORT)?;
    for i in 0..2 {
        ns[i].ip(&[
            "addr",
            "add",
            &format!("{}/24", UNDERLAY[i]),
            "dev",
            &names.veth[i],
        ])?;
        ns[i].ip(&["link", "set", &names.veth[i], "up"])?;
    }
    println!(
        "demo: {} ({}) <-> {} ({}) over a veth pair",
        names.netns[0], UNDERLAY[0], names.netns[1], UNDERLAY[1]
    );
    Ok(())
}

fn wg(ns: &Netns, args: &[&str]) -> Result<String> {
    let mut argv = vec!["wg"];
    argv.extend_from_slice(args);
    output(&mut ns.exec(&argv), SHORT)
}

/// Keys (`wg genkey`), `wg set` on both sides, tunnel addresses, links up.
fn configure(ns: &[Netns; 2], dp: &[Dataplane; 2], tmp: &TempDir) -> Result<()> {
    let mut public = Vec::new();
    for i in 0..2 {
        let key = tmp.write_private(&format!("key{i}"), &wg(&ns[i], &["genkey"])?)?;
        let key = key.to_string_lossy();
        wg(
            &ns[i],
            &[
                "set",
                dp[i].ifname(),
                "listen-port",
                LISTEN_PORT,
                "private-key",
                &key,
            ],
        )?;
        public.push(
            wg(&ns[i], &["show", dp[i].ifname(), "public-key"])?
                .trim()
                .to_owned(),
        );
    }
    for i in 0..2 {
        let o = 1 - i;
        let allowed = format!("{}/32,{}/128", TUNNEL_V4[o], TUNNEL_V6[o]);
        let endpoint = format!("{}:{LISTEN_PORT}", UNDERLAY[o]);
        let ifname = dp[i].ifname();
        wg(
            &ns[i],
            &[
                "set",
                ifname,
                "peer",
                &public[o],
                "allowed-ips",
                &allowed,
                "endpoint",
                &endpoint,
            ],
        )?;
        ns[i].ip(&[
            "addr",
            "add",
            &format!("{}/24", TUNNEL_V4[i]),
            "dev",
            ifname,
        ])?;
        ns[i].ip(&[
            "addr",
            "add",
            &format!("{}/64", TUNNEL_V6[i]),
            "dev",
            ifname,
            "nodad",
        ])?;
        ns[i].ip(&["link", "set", ifname, "up"])?;
    }
    println!(
        "demo: configured with wg: tunnel {} / {} <-> {} / {}",
        TUNNEL_V4[0], TUNNEL_V6[0], TUNNEL_V4[1], TUNNEL_V6[1]
    );
    Ok(())
}

/// Pings, iperf3 through the tunnel and over the veth, `wg show` and drop counters.
fn traffic(ns: &[Netns; 2], dp: &[Dataplane; 2], binary: &Path) -> Result<()> {
    for (from, to) in [(0, 1), (1, 0)] {
        for addr in [TUNNEL_V4[to], TUNNEL_V6[to]] {
            ping(&ns[from], addr)?;
        }
    }
    let tunnel = iperf3(&ns[1], &ns[0], TUNNEL_V4[1])?;
    println!(
        "iperf3 TCP {IPERF_SECONDS} s through the tunnel: {:.0} Mbit/s",
        tunnel / 1e6
    );
    let bare = iperf3(&ns[1], &ns[0], UNDERLAY[1])?;
    println!(
        "iperf3 TCP {IPERF_SECONDS} s over the bare veth:  {:.0} Mbit/s",
        bare / 1e6
    );
    println!("tunnel / bare veth: {:.1} %", 100.0 * tunnel / bare);
    for i in 0..2 {
        println!(
            "\n$ ip netns exec {} wg show {}",
            ns[i].name(),
            dp[i].ifname()
        );
        print!("{}", wg(&ns[i], &["show", dp[i].ifname()])?);
    }
    for d in dp {
        let mut stats = crate::proc::cmd(&[&binary.to_string_lossy(), "--stats", d.ifname()]);
        let stats = nonzero_counters(&output(&mut stats, SHORT)?);
        println!(
            "\nportdistrict-dataplane --stats {} (non-zero counters): {stats}",
            d.ifname()
        );
    }
    println!();
    Ok(())
}

/// Pings `addr` three times from `ns`; fails unless replies come back.
fn ping(ns: &Netns, addr: &str) -> Result<()> {
    let out = output(
        &mut ns.exec(&["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", addr]),
        SHORT,
    )
    .with_context(|| format!("ping {addr} from {} through the tunnel", ns.name()))?;
    println!("ping {addr} from {}: {}", ns.name(), ping_summary(&out));
    Ok(())
}

/// The loss and round-trip lines of ping's `-q` output, joined.
fn ping_summary(out: &str) -> String {
    out.lines()
        .filter(|l| l.contains("packets transmitted") || l.starts_with("rtt"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `name: value` lines of `--stats` whose value is not 0, as `name=value, ...`.
fn nonzero_counters(stats: &str) -> String {
    let nonzero: Vec<String> = stats
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(_, v)| *v != "0")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if nonzero.is_empty() {
        "none".to_owned()
    } else {
        nonzero.join(", ")
    }
}

/// A 3-second iperf3 TCP run from `client` to `addr` in `server`; bits per second as
/// the receiver counted them.
fn iperf3(server: &Netns, client: &Netns, addr: &str) -> Result<f64> {
    let mut srv =
        Background::start(&mut server.exec(&["iperf3", "-s", "-1", "-B", addr, "-p", IPERF_PORT]))?;
    wait_listening(server, &mut srv)?;
    let argv = [
        "iperf3",
        "-c",
        addr,
        "-p",
        IPERF_PORT,
        "-t",
        IPERF_SECONDS,
        "-J",
    ];
    let json = output(&mut client.exec(&argv), IPERF_LIMIT)
        .with_context(|| format!("iperf3 to {addr}"))?;
    received_bits_per_second(&json)
        .with_context(|| format!("no receiver throughput in iperf3's JSON report:\n{json}"))
}

/// Waits (at most 10 s) until the iperf3 server listens on [`IPERF_PORT`].
fn wait_listening(ns: &Netns, srv: &mut Background) -> Result<()> {
    let filter = format!("sport = :{IPERF_PORT}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        check_interrupt()?;
        if !output(&mut ns.exec(&["ss", "-Hltn", &filter]), SHORT)?
            .trim()
            .is_empty()
        {
            return Ok(());
        }
        if !srv.running() {
            bail!("the iperf3 server in {} exited before listening", ns.name());
        }
        if Instant::now() >= deadline {
            bail!(
                "the iperf3 server in {} is not listening after 10 s",
                ns.name()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// `end.sum_received.bits_per_second` of an iperf3 `-J` TCP report.
fn received_bits_per_second(json: &str) -> Option<f64> {
    let rest = &json[json.find("\"sum_received\"")?..];
    let rest = &rest[rest.find("\"bits_per_second\"")? + "\"bits_per_second\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok().filter(|v: &f64| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_pid_and_fit_ifnamsiz() {
        let n = Names::new(4_194_303);
        assert_eq!(n.netns, ["pd-demo-4194303-a", "pd-demo-4194303-b"]);
        assert_eq!(n.ifname, ["pdd303a", "pdd303b"]);
        assert!(n.ifname.iter().chain(&n.veth).all(|s| s.len() <= 15));
        assert_ne!(Names::new(1).ifname, Names::new(2).ifname);
    }

    #[test]
    fn throughput_is_read_from_sum_received() {
        let json = r#"{"end": {"sum_sent": {"bytes": 9, "bits_per_second": 111.5},
            "sum_received": {"start": 0, "bits_per_second":	2.5e9, "sender": false}}}"#;
        assert_eq!(received_bits_per_second(json), Some(2.5e9));
        let compact = r#"{"sum_received":{"bits_per_second":1234567.25}}"#;
        assert_eq!(received_bits_per_second(compact), Some(1_234_567.25));
        assert_eq!(
            received_bits_per_second(r#"{"sum_sent":{"bits_per_second":1}}"#),
            None
        );
        assert_eq!(
            received_bits_per_second(r#"{"sum_received":{"bits_per_second":"x"}}"#),
            None
        );
    }

    #[test]
    fn only_nonzero_counters_are_shown() {
        assert_eq!(
            nonzero_counters("rx_replay: 0\ntx_no_route: 2\nhandshakes_completed: 1\n"),
            "tx_no_route=2, handshakes_completed=1"
        );
        assert_eq!(nonzero_counters("rx_replay: 0\n"), "none");
    }

    #[test]
    fn ping_summary_keeps_loss_and_rtt() {
        let out = "PING 10.99.0.2 (10.99.0.2) 56(84) bytes of data.\n\n--- 10.99.0.2 ping statistics ---\n\
                   3 packets transmitted, 3 received, 0% packet loss, time 401ms\n\
                   rtt min/avg/max/mdev = 0.1/0.2/0.3/0.1 ms\n";
        assert_eq!(
            ping_summary(out),
            "3 packets transmitted, 3 received, 0% packet loss, time 401ms; rtt min/avg/max/mdev = 0.1/0.2/0.3/0.1 ms"
        );
    }
}
