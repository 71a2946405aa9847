use super::*;

const A: PublicKey = PublicKey([1; 32]);
const B: PublicKey = PublicKey([2; 32]);
const C: PublicKey = PublicKey([3; 32]);

fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn meet(peer: PublicKey, published: &[&str]) -> Vec<u8> {
    Message::Meet {
        peer: peer.0,
        published: published.iter().map(|s| ep(s)).collect(),
    }
    .emit()
}

#[test]
fn a_pair_is_introduced_only_when_both_asked_with_mapped_endpoints_first() {
    let t0 = crate::test_now();
    let mut f = Facilitator::new(Config::default());
    let mut out = Vec::new();
    f.handle(
        t0,
        A,
        ep("198.51.100.10:40000"),
        &meet(B, &["192.168.10.2:51820"]),
        &mut out,
    );
    assert_eq!(out, vec![Out::Send(A, Message::Waiting { peer: B.0 })]);
    out.clear();
    // C asking for A does not reveal A to C, nor C to A.
    f.handle(t0, C, ep("198.51.100.30:1"), &meet(A, &[]), &mut out);
    assert_eq!(out, vec![Out::Send(C, Message::Waiting { peer: A.0 })]);
    out.clear();
    let t1 = t0 + Duration::from_secs(30);
    f.handle(
        t1,
        B,
        ep("198.51.100.20:50000"),
        &meet(A, &["192.168.20.2:51820"]),
        &mut out,
    );
    assert_eq!(
        out,
        vec![
            Out::Send(
                B,
                Message::Introduce {
                    peer: A.0,
                    window: 1,
                    start_in_ms: 2000,
                    endpoints: vec![ep("198.51.100.10:40000"), ep("192.168.10.2:51820")],
                }
            ),
            Out::Send(
                A,
                Message::Introduce {
                    peer: B.0,
                    window: 1,
                    start_in_ms: 2000,
                    endpoints: vec![ep("198.51.100.20:50000"), ep("192.168.20.2:51820")],
                }
            ),
        ]
    );
    assert_eq!(f.stats.introductions, 1);
    // The wishes are used up: after the window, another request waits again.
    out.clear();
    let later = t1 + Duration::from_secs(6);
    f.handle(later, B, ep("198.51.100.20:50000"), &meet(A, &[]), &mut out);
    assert_eq!(out, vec![Out::Send(B, Message::Waiting { peer: A.0 })]);
}

#[test]
fn mappings_seen_by_the_relay_are_introduced_after_the_session_one() {
    let t0 = crate::test_now();
    let mut f = Facilitator::new(Config::default());
    let mut out = Vec::new();
    f.handle(t0, A, ep("198.51.100.10:51820"), &meet(B, &[]), &mut out);
    f.seen(&B, ep("198.51.100.20:2207"));
    // Unknown yet: nothing kept. Known (after a request), kept.
    f.handle(t0, B, ep("198.51.100.20:54765"), &meet(C, &[]), &mut out);
    f.seen(&B, ep("198.51.100.20:2207"));
    f.seen(&B, ep("198.51.100.20:54765"));
    out.clear();
    f.handle(
        t0,
        B,
        ep("198.51.100.20:54765"),
        &meet(A, &["192.168.20.2:51820"]),
        &mut out,
    );
    f.seen(&B, ep("198.51.100.20:2207"));
    let Some(Out::Send(_, Message::Introduce { endpoints, .. })) =
        out.iter().find(|o| matches!(o, Out::Send(k, _) if *k == A))
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        endpoints,
        &vec![
            ep("198.51.100.20:54765"),
            ep("198.51.100.20:2207"),
            ep("192.168.20.2:51820")
        ]
    );
}

#[test]
fn asking_again_after_a_lost_answer_gets_the_same_window_and_relay() {
    let t0 = crate::test_now();
    let mut f = Facilitator::new(Config::default());
    let mut out = Vec::new();
    f.handle(t0, A, ep("198.51.100.10:1"), &meet(B, &[]), &mut out);
    f.handle(t0, B, ep("198.51.100.20:1"), &meet(A, &[]), &mut out);
    assert_eq!(f.stats.introductions, 1);
    // A's copy was lost; it asks again 500 ms later: the same window, 1500 ms on.
    out.clear();
    f.handle(
        t0 + Duration::from_millis(500),
        A,
        ep("198.51.100.10:1"),
        &meet(B, &[]),
        &mut out,
    );
    assert_eq!(
        out,
        vec![Out::Send(
            A,
            Message::Introduce {
                peer: B.0,
                window: 1,
                start_in_ms: 1500,
                endpoints: vec![ep("198.51.100.20:1")],
            }
        )]
    );
    assert_eq!((f.stats.introductions, f.stats.repeated), (1, 1));
    // Past the window, asking again is a new wish.
    out.clear();
    f.handle(
        t0 + Duration::from_secs(6),
        A,
        ep("198.51.100.10:1"),
        &meet(B, &[]),
        &mut out,
    );
    assert_eq!(out, vec![Out::Send(A, Message::Waiting { peer: B.0 })]);
    // A relay, asked again: given again.
    let ask = |p: PublicKey| Message::RelayAsk { peer: p.0 }.emit();
    out.clear();
    f.handle(t0, A, ep("198.51.100.10:1"), &ask(B), &mut out);
    f.handle(t0, B, ep("198.51.100.20:1"), &ask(A), &mut out);
    f.handle(
        t0 + Duration::from_secs(2),
        A,
        ep("198.51.100.10:1"),
        &ask(B),
        &mut out,
    );
    assert_eq!(
        out,
        vec![
            Out::Send(A, Message::Waiting { peer: B.0 }),
            Out::Relay(B, A),
            Out::Relay(A, B)
        ]
    );
    assert_eq!(f.stats.relays, 1);
}

#[test]
fn a_stale_wish_does_not_count() {
    let t0 = crate::test_now();
    let mut f = Facilitator::new(Config::default());
    let mut out = Vec::new();
    f.handle(t0, A, ep("198.51.100.10:1"), &meet(B, &[]), &mut out);
    out.clear();
    let late = t0 + Duration::from_secs(91);
    f.handle(late, B, ep("198.51.100.20:1"), &meet(A, &[]), &mut out);
    assert_eq!(out, vec![Out::Send(B, Message::Waiting { peer: A.0 })]);
    f.expire(late);
    assert_eq!(f.stats.introductions, 0);
}

#[test]
fn relays_are_mutual_and_refused_when_not_offered() {
    let t0 = crate::test_now();
    let mut f = Facilitator::new(Config::default());
    let mut out = Vec::new();
    let ask = |p: PublicKey| Message::RelayAsk { peer: p.0 }.emit();
    f.handle(t0, A, ep("198.51.100.10:1"), &ask(B), &mut out);
    f.handle(t0, B, ep("198.51.100.20:1"), &ask(A), &mut out);
    assert_eq!(
        out,
        vec![
            Out::Send(A, Message::Waiting { peer: B.0 }),
            Out::Relay(B, A)
        ]
    );
    let mut f = Facilitator::new(Config {
        relay: false,
        ..Config::default()
    });
    out.clear();
    f.handle(t0, A, ep("198.51.100.10:1"), &ask(B), &mut out);
    assert_eq!(
        out,
        vec![Out::Send(
            A,
            Message::Refused {
                peer: B.0,
                reason: Refusal::NoRelay
            }
        )]
    );
}

#[test]
fn floods_garbage_and_answers_are_counted_drops() {
    let t0 = crate::test_now();
    let mut f = Facilitator::new(Config::default());
    let mut out = Vec::new();
    f.handle(t0, A, ep("198.51.100.10:1"), b"junk", &mut out);
    f.handle(
        t0,
        A,
        ep("198.51.100.10:1"),
        &Message::Waiting { peer: B.0 }.emit(),
        &mut out,
    );
    f.handle(t0, A, ep("198.51.100.10:1"), &meet(A, &[]), &mut out);
    assert_eq!(f.stats.malformed, 3);
    assert!(out.is_empty());
    for _ in 0..100 {
        f.handle(t0, A, ep("198.51.100.10:1"), &meet(B, &[]), &mut out);
    }
    // The two drops that parsed (an answer, a request naming oneself) used two of
    // the 20 tokens; 18 requests answered, 82 dropped.
    assert_eq!(f.stats.requests, 18);
    assert_eq!(f.stats.rate_limited, 82);
    // Tokens come back with time.
    f.handle(
        t0 + Duration::from_secs(1),
        A,
        ep("198.51.100.10:1"),
        &meet(B, &[]),
        &mut out,
    );
    assert_eq!(f.stats.requests, 19);
}
