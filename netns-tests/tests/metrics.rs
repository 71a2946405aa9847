//! `portdistrict-dataplane --metrics-listen` (here through `PD_METRICS_LISTEN`, as
//! wg-quick would pass it) on 127.0.0.1 inside each node's namespace: the text
//! parses strictly (and passes `promtool check metrics` where installed), counters
//! only grow between scrapes, the peer's byte counters grow with the traffic, and a
//! scrape of 1,000 peers is answered whole (its time is printed, bounded loosely).

use portdistrict_netns_tests::metrics::{parse, promtool_check, scrape, Exposition};
use portdistrict_netns_tests::{
    assert_ping, Daemon, Family, Implementation, Keypair, Netns, Pair, PairOptions,
};
use portdistrict_wg::PublicKey;
use std::time::{Duration, Instant};

/// Where each node's endpoint listens (inside its own namespace).
const ADDR: &str = "127.0.0.1:9586";

fn env() -> Vec<(String, String)> {
    vec![("PD_METRICS_LISTEN".to_owned(), ADDR.to_owned())]
}

/// Scrapes `ns`'s endpoint, checks the text and parses it.
fn scrape_checked(ns: &Netns) -> (Exposition, String) {
    let s = scrape(ns, ADDR, "/metrics");
    assert_eq!(s.status, 200, "{}", s.body);
    promtool_check(&s.body);
    (parse(&s.body), s.body)
}

/// Every counter sample of `before` is in `after`, not smaller.
fn assert_monotonic(before: &Exposition, after: &Exposition) {
    for ((name, labels), v) in &before.samples {
        if before.types.get(name).map(String::as_str) != Some("counter") {
            continue;
        }
        let now = after.samples.get(&(name.clone(), labels.clone()));
        let now = now.unwrap_or_else(|| panic!("{name}{labels:?} gone from the second scrape"));
        assert!(*now >= *v, "{name}{labels:?} went back: {v} -> {now}");
    }
}

#[test]
fn dataplane_metrics_follow_traffic() {
    let pair = Pair::new(&PairOptions {
        env: env(),
        ..PairOptions::default()
    });
    let (left, right) = (&pair.left, &pair.right);
    assert_ping(&left.ns, right.tunnel_addr(Family::V4), 3);
    let ifname = left.daemon.ifname();
    let peer = right.keys.public.as_str();
    let labels = [("interface", ifname), ("peer", peer)];

    let (first, text) = scrape_checked(&left.ns);
    assert!(
        !text.contains("10.77."),
        "no endpoint in the metrics:\n{text}"
    );
    assert_eq!(
        first.get("portdistrict_dataplane_peers", &[("interface", ifname)]),
        Some(1.0)
    );
    let age = first
        .get(
            "portdistrict_dataplane_peer_last_handshake_age_seconds",
            &labels,
        )
        .expect("a handshake age after the ping");
    assert!((0.0..60.0).contains(&age), "age {age}");
    let rx0 = first
        .get("portdistrict_dataplane_peer_rx_bytes_total", &labels)
        .expect("rx bytes");
    let tx0 = first
        .get("portdistrict_dataplane_peer_tx_bytes_total", &labels)
        .expect("tx bytes");
    let stats = left.daemon.stats();
    assert_eq!(
        first.get(
            "portdistrict_dataplane_handshakes_completed_total",
            &[("interface", ifname)]
        ),
        Some(stats["handshakes_completed"] as f64),
        "the same counters as --stats"
    );
    assert!(first.types.len() > 40, "{} families", first.types.len());

    let dst = right.tunnel_addr(Family::V4).to_string();
    left.ns.exec(&[
        "ping", "-n", "-q", "-c", "200", "-i", "0.005", "-s", "1000", "-W", "1", &dst,
    ]);
    let (second, _) = scrape_checked(&left.ns);
    assert_monotonic(&first, &second);
    let rx1 = second
        .get("portdistrict_dataplane_peer_rx_bytes_total", &labels)
        .unwrap();
    let tx1 = second
        .get("portdistrict_dataplane_peer_tx_bytes_total", &labels)
        .unwrap();
    // 200 echo requests and replies of 1,000 bytes (plus headers) each way, 150 at
    // least however many were lost.
    assert!(rx1 - rx0 >= 150_000.0, "rx {rx0} -> {rx1}");
    assert!(tx1 - tx0 >= 150_000.0, "tx {tx0} -> {tx1}");

    // Only GET /metrics.
    assert_eq!(scrape(&left.ns, ADDR, "/").status, 404);
    // The other node's endpoint sees the same traffic from its side.
    let (right_view, _) = scrape_checked(&right.ns);
    let from_left = [
        ("interface", right.daemon.ifname()),
        ("peer", left.keys.public.as_str()),
    ];
    let r_rx = right_view
        .get("portdistrict_dataplane_peer_rx_bytes_total", &from_left)
        .unwrap();
    assert!(
        r_rx >= tx1 - 10_000.0,
        "right received {r_rx}, left sent {tx1}"
    );
}

#[test]
fn a_scrape_of_1000_peers() {
    let ns = Netns::new("metrics-1000");
    let daemon = Daemon::start_env(&ns, Implementation::Uut, &env());
    let me = Keypair::generate();
    let mut conf = format!("[Interface]\nPrivateKey = {}\n", me.private);
    for i in 0..1000u32 {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        key[31] = 0x5a;
        conf.push_str(&format!(
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.{}.{}.{}/32\nEndpoint = 10.77.200.1:{}\n",
            PublicKey(key).to_base64(),
            200 + i / 65536,
            (i / 256) % 256,
            i % 256,
            10_000 + i
        ));
    }
    let file = daemon.private_file("1000.conf", &conf);
    daemon.wg(&["setconf", daemon.ifname(), &file.to_string_lossy()]);

    let mut times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let s = scrape(&ns, ADDR, "/metrics");
        let wall = started.elapsed();
        assert_eq!(s.status, 200);
        let e = parse(&s.body);
        assert_eq!(
            e.all("portdistrict_dataplane_peer_rx_bytes_total").len(),
            1000
        );
        assert_eq!(
            e.all("portdistrict_dataplane_peer_tx_bytes_total").len(),
            1000
        );
        assert_eq!(
            e.get(
                "portdistrict_dataplane_peers",
                &[("interface", daemon.ifname())]
            ),
            Some(1000.0)
        );
        println!(
            "scrape of 1000 peers: {:.1} ms over HTTP ({} bytes; {:.0} ms with the python client's start)",
            s.took.as_secs_f64() * 1e3,
            s.body.len(),
            wall.as_secs_f64() * 1e3
        );
        times.push(s.took);
        if times.len() == 1 {
            promtool_check(&s.body);
        }
    }
    let best = times.iter().min().unwrap();
    // Loose: a bound that catches a pathology (a walk per peer per sample), not a
    // benchmark.
    assert!(
        *best < Duration::from_secs(1),
        "a scrape of 1000 peers took {best:?}"
    );
}
