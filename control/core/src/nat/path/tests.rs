use super::*;

fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Ticks every 100 ms from `from` to `to` (exclusive) with `obs`, collecting actions.
fn run(p: &mut PeerPath, from: Instant, to: Instant, obs: Observation) -> Vec<(u64, Action)> {
    let mut t = from;
    let mut all = Vec::new();
    while t < to {
        let mut out = Vec::new();
        p.tick(t, obs, &mut out);
        all.extend(
            out.into_iter()
                .map(|a| (t.duration_since(from).as_millis() as u64, a)),
        );
        t += ms(100);
    }
    all
}

#[test]
fn a_peer_that_handshakes_at_its_published_endpoint_needs_no_window() {
    let t0 = crate::test_now();
    let mut p = PeerPath::new(Settings::default(), true, t0);
    let obs = Observation {
        handshake: Some((t0 + ms(300), ep("192.0.2.2:51820"))),
    };
    let acts = run(&mut p, t0, t0 + Duration::from_secs(20), obs);
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(p.path(), Path::Direct);
    assert_eq!(p.pinned(), None, "published and working: nothing to pin");
}

#[test]
fn a_window_primes_with_a_low_ttl_then_punches_and_pins_what_answered() {
    let t0 = crate::test_now();
    let s = Settings::default();
    let mut p = PeerPath::new(s, true, t0);
    let acts = run(&mut p, t0, t0 + ms(5100), Observation::default());
    assert_eq!(
        acts,
        vec![(5000, Action::Hold), (5000, Action::AskMeet)],
        "holds WireGuard's own initiations and asks after first_wait"
    );
    // Not introduced yet: asks again every 2 s.
    let acts = run(&mut p, t0 + ms(5100), t0 + ms(7100), Observation::default());
    assert_eq!(acts, vec![(1900, Action::AskMeet)]);
    let start = t0 + ms(9000);
    let (mapped, published) = (ep("198.51.100.20:50000"), ep("192.168.20.2:51820"));
    p.introduced(start, vec![mapped, published]);
    assert_eq!(p.next_window(), Some(start));
    let acts = run(
        &mut p,
        t0 + ms(7100),
        start + ms(1000),
        Observation::default(),
    );
    let probes: Vec<_> = acts
        .iter()
        .filter_map(|(t, a)| match a {
            Action::Probe { to, ttl } => Some((*t, *to, *ttl)),
            _ => None,
        })
        .collect();
    // Primer: 0, 200, 400 ms after the start at TTL 2, to both; then full TTL.
    let base = 1900;
    assert_eq!(
        probes,
        vec![
            (base, mapped, 2),
            (base, published, 2),
            (base + 200, mapped, 2),
            (base + 200, published, 2),
            (base + 400, mapped, 2),
            (base + 400, published, 2),
            (base + 600, mapped, 0),
            (base + 600, published, 0),
            (base + 800, mapped, 0),
            (base + 800, published, 0),
        ]
    );
    assert_eq!(acts.len(), probes.len());
    // A handshake from before the window does not count; one after it does.
    let stale = Observation {
        handshake: Some((start - ms(1), mapped)),
    };
    assert!(run(&mut p, start + ms(1000), start + ms(1100), stale)
        .iter()
        .all(|(_, a)| matches!(a, Action::Probe { .. })));
    let fresh = Observation {
        handshake: Some((start + ms(1050), mapped)),
    };
    let acts = run(&mut p, start + ms(1100), start + ms(1200), fresh);
    assert_eq!(acts, vec![(0, Action::Pin(Some(mapped)))]);
    assert_eq!(p.path(), Path::Direct);
    assert_eq!(p.last_result(), Some(WindowResult::Direct(mapped)));
    assert_eq!(
        p.counters,
        Counters {
            tried: 1,
            succeeded: 1,
            relayed: 0,
            last_direct_after: Some(ms(1050)),
            last_relay_after: None,
        }
    );
}

#[test]
fn a_failed_window_asks_for_a_relay_binds_pins_and_later_upgrades() {
    let t0 = crate::test_now();
    let s = Settings::default();
    let mut p = PeerPath::new(s, true, t0);
    let _ = run(&mut p, t0, t0 + ms(5100), Observation::default());
    let start = t0 + ms(6000);
    let cand = ep("198.51.100.20:50000");
    p.introduced(start, vec![cand]);
    let acts = run(
        &mut p,
        t0 + ms(5100),
        start + s.primer + s.punch + ms(100),
        Observation::default(),
    );
    assert_eq!(acts.last().unwrap().1, Action::AskRelay);
    assert_eq!(p.last_result(), Some(WindowResult::Failed));
    let relay = ep("203.0.113.1:40000");
    let now = start + ms(3100);
    let mut out = Vec::new();
    p.relay_offered(now, relay, [7; 16], &mut out);
    let bind = bind_datagram(&[7; 16]).to_vec();
    assert_eq!(
        out,
        vec![
            Action::Send {
                to: relay,
                payload: bind.clone()
            },
            Action::Send {
                to: relay,
                payload: bind.clone()
            },
            Action::Send {
                to: relay,
                payload: bind
            },
            Action::Pin(Some(relay)),
        ]
    );
    assert_eq!(p.path(), Path::Relay);
    assert_eq!(p.counters.relayed, 1);
    // Handshakes through the relay keep it relayed; the next window is asked for
    // after the backoff (30 s after one failure).
    let via_relay = Observation {
        handshake: Some((now + ms(500), relay)),
    };
    let acts = run(&mut p, now, now + Duration::from_secs(31), via_relay);
    // Meanwhile the source is bound again every 15 s (a NAT may remap the flow).
    let rebind = Action::Send {
        to: relay,
        payload: bind_datagram(&[7; 16]).to_vec(),
    };
    assert_eq!(
        acts,
        vec![
            (15_000, rebind.clone()),
            (30_000, rebind),
            (30_000, Action::AskMeet)
        ]
    );
    assert_eq!(p.path(), Path::Relay);
    // The upgrade: a window whose probe is answered from the peer's address.
    let start2 = now + Duration::from_secs(32);
    p.introduced(start2, vec![cand]);
    let direct = Observation {
        handshake: Some((start2 + ms(700), cand)),
    };
    let acts = run(
        &mut p,
        start2,
        start2 + ms(800),
        Observation {
            handshake: Some((now, relay)),
        },
    );
    assert!(acts.iter().all(|(_, a)| matches!(a, Action::Probe { .. })));
    let acts = run(&mut p, start2 + ms(800), start2 + ms(900), direct);
    assert_eq!(acts, vec![(0, Action::Pin(Some(cand)))]);
    assert_eq!(p.path(), Path::Direct);
    assert_eq!(
        p.counters,
        Counters {
            tried: 2,
            succeeded: 1,
            relayed: 1,
            last_direct_after: Some(ms(700)),
            last_relay_after: Some(ms(100)),
        }
    );
}

#[test]
fn without_any_path_the_peer_keeps_asking() {
    let t0 = crate::test_now();
    let mut p = PeerPath::new(Settings::default(), true, t0);
    let acts = run(
        &mut p,
        t0,
        t0 + Duration::from_secs(120),
        Observation::default(),
    );
    let asks = acts.iter().filter(|(_, a)| *a == Action::AskMeet).count();
    // From the first wait (5 s) on, every 2 s: its introduction may come any time.
    assert_eq!(asks, 58, "{acts:?}");
    assert_eq!(acts[0], (5000, Action::Hold), "held once, first");
    assert!(acts[1..].iter().all(|(_, a)| *a == Action::AskMeet));
}

#[test]
fn without_a_relay_failures_back_off_doubling_up_to_the_limit() {
    let t0 = crate::test_now();
    let s = Settings::default();
    let mut p = PeerPath::new(s, false, t0);
    let acts = run(&mut p, t0, t0 + ms(6000), Observation::default());
    assert_eq!(
        acts,
        vec![(5000, Action::Hold)],
        "no facilitator: nothing to ask; WireGuard's own initiations are held"
    );
    let mut t = t0 + ms(6000);
    let mut gaps = Vec::new();
    for _ in 0..7 {
        // The daemon offers the next shared-secret window once the backoff allows.
        let mut start = t;
        while !p.wants_window_at(start) {
            start += Duration::from_secs(1);
        }
        gaps.push(start.duration_since(t).as_secs());
        p.scheduled(start, vec![ep("198.51.100.20:50000")]);
        let end = start + s.primer + s.punch + ms(100);
        let _ = run(&mut p, start, end, Observation::default());
        t = end;
    }
    assert_eq!(gaps, vec![0, 30, 60, 120, 240, 480, 600]);
    assert_eq!(p.path(), Path::None);
    assert_eq!(p.counters.tried, 7);
}

#[test]
fn a_direct_path_that_goes_quiet_is_unpinned_and_tried_again() {
    let t0 = crate::test_now();
    let s = Settings::default();
    let mut p = PeerPath::new(s, true, t0);
    let _ = run(&mut p, t0, t0 + ms(5100), Observation::default());
    let cand = ep("198.51.100.20:50000");
    p.introduced(t0 + ms(6000), vec![cand]);
    let ok = Observation {
        handshake: Some((t0 + ms(6100), cand)),
    };
    let acts = run(&mut p, t0 + ms(6000), t0 + ms(6300), ok);
    assert_eq!(acts, vec![(0, Action::Pin(Some(cand)))]);
    let quiet = t0 + ms(6100) + s.stale + ms(100);
    let mut out = Vec::new();
    p.tick(quiet, ok, &mut out);
    assert_eq!(out, vec![Action::Pin(None), Action::Hold, Action::AskMeet]);
    assert_eq!(p.path(), Path::None);
}

#[test]
fn shared_secret_windows_agree_and_fall_inside_their_slot() {
    let secret = pair_secret(&[9; 32], &[1; 32], &[2; 32]);
    assert_eq!(
        secret,
        pair_secret(&[9; 32], &[2; 32], &[1; 32]),
        "order does not matter"
    );
    assert_ne!(secret, pair_secret(&[8; 32], &[1; 32], &[2; 32]));
    let now = 1_800_000_000_000u64;
    let w = secret_window(&secret, now, 60_000, 3_000);
    assert!(w >= now && w < now + 120_000);
    assert!(
        w % 60_000 <= 57_000,
        "leaves the window's length inside the slot"
    );
    assert_eq!(w, secret_window(&secret, now, 60_000, 3_000));
    assert_eq!(
        secret_window(&secret, w, 60_000, 3_000),
        w,
        "at its start, the same"
    );
    let next = secret_window(&secret, w + 1, 60_000, 3_000);
    assert!(next > w + 3_000 && next - w < 120_000);
    // Another pair lands elsewhere (most of the time; these values are fixed).
    let other = pair_secret(&[7; 32], &[1; 32], &[2; 32]);
    assert_ne!(secret_window(&other, now, 60_000, 3_000), w);
}

#[test]
fn held_without_a_path_a_handshake_from_the_peer_is_pinned_and_releases_the_hold() {
    let t0 = crate::test_now();
    let mut p = PeerPath::new(Settings::default(), false, t0);
    let acts = run(&mut p, t0, t0 + ms(6000), Observation::default());
    assert_eq!(acts, vec![(5000, Action::Hold)]);
    // A handshake from before the hold does not count; one after it does.
    let peer = ep("198.51.100.20:51820");
    let old = Observation {
        handshake: Some((t0 + ms(4000), peer)),
    };
    let acts = run(&mut p, t0 + ms(6000), t0 + ms(7000), old);
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(p.path(), Path::None);
    let new = Observation {
        handshake: Some((t0 + ms(7100), peer)),
    };
    let acts = run(&mut p, t0 + ms(7000), t0 + ms(7500), new);
    assert_eq!(acts, vec![(0, Action::Pin(Some(peer)))]);
    assert_eq!(p.path(), Path::Direct);
    assert_eq!(p.pinned(), Some(peer));
}
