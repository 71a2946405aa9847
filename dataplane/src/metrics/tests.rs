use super::*;
use portdistrict_wg::PublicKey;

fn snapshot() -> Snapshot {
    let mut stats = Stats::new();
    for (k, v) in portdistrict_wg::stats::Stats::default().iter() {
        stats.count(k, v);
    }
    stats.count("rx_replay", 9); // twice: only the first is shown
    stats.flag("tx_gso", true);
    stats.count("crypto_threads", 2);
    stats.count("crypto_jobs", 41);
    stats.text("xdp", "filter".to_owned());
    stats.text("xdp_interfaces", "eth0:native,veth1:tc".to_owned());
    stats.count("xdp_drop_bad_type", 5);
    stats.count("some_new_field", 1);
    let peer = |b: u8, handshake: Option<u64>| PeerStats {
        public_key: PublicKey([b; 32]),
        endpoint: Some("192.0.2.1:51820".parse().unwrap()),
        last_handshake: handshake.map(Duration::from_secs),
        rx_bytes: 1000 * u64::from(b),
        tx_bytes: 2000 * u64::from(b),
        handshake_source: None,
    };
    Snapshot {
        interface: "wg0".to_owned(),
        stats,
        peers: vec![peer(1, Some(1_000)), peer(2, None)],
        wall: Duration::from_millis(1_012_500),
    }
}

#[test]
fn counters_gauges_and_peers() {
    let text = render(&snapshot());
    for line in [
        "# TYPE portdistrict_dataplane_rx_replay_total counter",
        "# HELP portdistrict_dataplane_rx_replay_total Data messages with a replayed or too old counter.",
        "portdistrict_dataplane_rx_malformed_total{interface=\"wg0\"} 0",
        "# TYPE portdistrict_dataplane_tx_gso gauge",
        "portdistrict_dataplane_tx_gso{interface=\"wg0\"} 1",
        "portdistrict_dataplane_crypto_threads{interface=\"wg0\"} 2",
        "portdistrict_dataplane_crypto_jobs_total{interface=\"wg0\"} 41",
        "portdistrict_dataplane_xdp_mode{interface=\"wg0\",mode=\"filter\"} 1",
        "portdistrict_dataplane_xdp_mode{interface=\"wg0\",mode=\"off\"} 0",
        "portdistrict_dataplane_xdp_attached{interface=\"wg0\",underlay=\"veth1\",attach=\"tc\"} 1",
        "portdistrict_dataplane_xdp_drop_bad_type_total{interface=\"wg0\"} 5",
        "# HELP portdistrict_dataplane_some_new_field_total The --stats field some_new_field.",
        "portdistrict_dataplane_peers{interface=\"wg0\"} 2",
        "# TYPE portdistrict_dataplane_peer_rx_bytes_total counter",
        "portdistrict_dataplane_peer_rx_bytes_total{interface=\"wg0\",peer=\"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"} 1000",
        "portdistrict_dataplane_peer_tx_bytes_total{interface=\"wg0\",peer=\"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\"} 4000",
        "portdistrict_dataplane_peer_last_handshake_age_seconds{interface=\"wg0\",peer=\"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"} 12.5",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("192.0.2.1"), "no endpoint label");
    assert!(
        !text.contains("age_seconds{interface=\"wg0\",peer=\"AgIC"),
        "no age before the first handshake"
    );
    // Every family once, every sample under its family.
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let mut names: Vec<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), n, "a family twice");
}

#[test]
fn every_documented_gauge_and_counter_has_help() {
    for (name, help) in GAUGES.iter().chain(COUNTERS) {
        assert!(portdistrict_metrics::exposition::valid_name(name));
        assert!(help.ends_with('.'), "{name}: {help}");
    }
    for c in portdistrict_ebpf::abi::Counter::ALL {
        let (help, kind) = describe(c.name());
        assert_eq!(kind, Kind::Counter);
        assert!(!help.starts_with("The --stats field"), "{}", c.name());
    }
}
