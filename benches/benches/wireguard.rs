//! Criterion micro-benchmarks of the sans-IO WireGuard core.
//!
//! - `encapsulate/{64,512,1420}`: one tunnel packet through
//!   `Device::handle_tun_packet` on an established session (route lookup, seal,
//!   timers, the copy into the capture sink);
//! - `decapsulate/{64,512,1420}`: one data datagram through
//!   `Device::handle_datagram` (index lookup, replay check, open, source check,
//!   the TUN write); every datagram is freshly sealed by the peer outside the timed
//!   part, because the replay window refuses repeats;
//! - `handshake/full`: initiation -> response -> confirming data message between two
//!   devices, on a virtual clock advanced by `HANDSHAKE_STEP` per handshake;
//!   `handshake/{create_initiation,consume_initiation,create_response}`: the Noise
//!   functions alone;
//! - `allowed_ips/lookup/{1000,10000,100000}`: longest-prefix match over random
//!   /24../32 IPv4 prefixes, half hits and half random addresses.
//!
//! Every benchmark checks afterwards that the device refused nothing, so a number
//! never measures a silently dropped packet.

use criterion::{black_box, BatchSize, BenchmarkId, Criterion, Throughput};
use portdistrict_benches::{
    lookup_addresses, random_v4_prefixes, refusals, table_of, Node, Pair, SplitMix64,
    HANDSHAKE_STEP,
};
use portdistrict_wg::crypto::tai64n;
use portdistrict_wg::handshake::{
    consume_initiation, create_initiation, create_response, StaticIdentity, INITIATION_LEN,
    RESPONSE_LEN,
};
use portdistrict_wg::wire::{Initiation, Response};
use portdistrict_wg::{PresharedKey, PrivateKey};
use std::time::{Duration, Instant};

/// Inner packet sizes: a small packet, a medium one, and a full 1420-byte MTU.
const SIZES: [usize; 3] = [64, 512, 1420];
/// Tunnel MTU of the benchmark devices (wg-quick's default).
const MTU: usize = 1420;
/// Prefix counts of the routing-table benchmark.
const TABLE_SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// Lookup keys per table (a power of two, so the index wraps with a mask).
const LOOKUP_KEYS: usize = 1 << 16;

/// A pair with a confirmed session, or a panic saying why there is none.
fn established() -> Pair {
    Pair::established(Instant::now(), MTU).unwrap_or_else(|e| panic!("benchmark setup: {e}"))
}

/// Panics when `node` refused anything during a benchmark.
fn assert_clean(bench: &str, node: &Node) {
    let refused = refusals(&node.device.stats) + node.io.refused;
    assert_eq!(
        refused, 0,
        "{bench}: the device refused {refused} inputs: {:?}",
        node.device.stats
    );
}

fn encapsulate(c: &mut Criterion) {
    let mut group = c.benchmark_group("encapsulate");
    for size in SIZES {
        let mut pair = established();
        let packet = pair
            .packet(size)
            .unwrap_or_else(|e| panic!("encapsulate/{size}: {e}"));
        let now = pair.now;
        let mut ran = false;
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            ran = true;
            b.iter(|| {
                pair.initiator
                    .seal(now, black_box(&packet))
                    .map(<[u8]>::len)
            })
        });
        assert_clean("encapsulate", &pair.initiator);
        // The handshake sent 1 datagram; a run sends one per iteration.
        assert!(
            !ran || pair.initiator.io.sent > 1,
            "encapsulate/{size}: nothing was sent"
        );
    }
    group.finish();
}

fn decapsulate(c: &mut Criterion) {
    let mut group = c.benchmark_group("decapsulate");
    for size in SIZES {
        let mut pair = established();
        let packet = pair
            .packet(size)
            .unwrap_or_else(|e| panic!("decapsulate/{size}: {e}"));
        let (now, from) = (pair.now, pair.initiator.addr);
        let written_before = pair.responder.io.tun_written;
        let mut ran = false;
        let (initiator, responder) = (&mut pair.initiator, &mut pair.responder);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            ran = true;
            b.iter_batched_ref(
                || {
                    let sealed = initiator.seal(now, &packet).map(<[u8]>::to_vec);
                    sealed
                        .unwrap_or_else(|| panic!("decapsulate/{size}: the sender emitted nothing"))
                },
                |datagram| {
                    responder.io.clear();
                    responder
                        .device
                        .handle_datagram(now, from, None, datagram, &mut responder.io);
                },
                BatchSize::SmallInput,
            )
        });
        assert_clean("decapsulate", &pair.responder);
        if !ran {
            continue;
        }
        assert_eq!(
            pair.responder.io.last_tun(),
            &packet[..],
            "decapsulate/{size}: wrong plaintext"
        );
        assert!(
            pair.responder.io.tun_written > written_before,
            "decapsulate/{size}: nothing decrypted"
        );
    }
    group.finish();
}

fn handshake_full(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    let mut pair = established();
    group.bench_function("full", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                pair.advance(HANDSHAKE_STEP);
                if let Err(e) = pair.handshake() {
                    panic!("handshake/full: {e}");
                }
            }
            start.elapsed()
        })
    });
    assert_clean("handshake/full", &pair.initiator);
    assert_clean("handshake/full", &pair.responder);
    handshake_parts(&mut group);
    group.finish();
}

/// The three Noise functions alone, on fixed keys (they are pure, so repeatable).
fn handshake_parts(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let initiator = StaticIdentity::new(PrivateKey::from_bytes([0x11; 32]));
    let responder = StaticIdentity::new(PrivateKey::from_bytes([0x22; 32]));
    let (ipub, rpub) = (*initiator.public_key(), *responder.public_key());
    let ss_i = initiator
        .static_static(&rpub)
        .unwrap_or_else(|| panic!("handshake: low-order key"));
    let ss_r = responder
        .static_static(&ipub)
        .unwrap_or_else(|| panic!("handshake: low-order key"));
    let mut init = [0u8; INITIATION_LEN];
    let create = |msg: &mut [u8; INITIATION_LEN]| {
        let mut view = Initiation::new_unchecked(&mut msg[..]);
        create_initiation(
            &initiator,
            &rpub,
            &ss_i,
            1,
            [7; 32],
            tai64n(1_700_000_000, 0),
            &mut view,
        )
    };
    group.bench_function("create_initiation", |b| {
        b.iter(|| create(black_box(&mut init)).is_ok())
    });
    create(&mut init).unwrap_or_else(|e| panic!("handshake/create_initiation: {e}"));
    let msg = Initiation::new_checked(&init[..]).unwrap_or_else(|e| panic!("handshake: {e}"));
    let consume = || {
        consume_initiation(&responder, black_box(&msg), |k| {
            (*k == ipub).then_some(ss_r)
        })
    };
    group.bench_function("consume_initiation", |b| b.iter(|| consume().is_ok()));
    let consumed = consume().unwrap_or_else(|e| panic!("handshake/consume_initiation: {e}"));
    let psk = PresharedKey::default();
    let mut resp = [0u8; RESPONSE_LEN];
    group.bench_function("create_response", |b| {
        b.iter(|| {
            let mut view = Response::new_unchecked(&mut resp[..]);
            create_response(black_box(&consumed), &psk, 2, [9; 32], &mut view).is_ok()
        })
    });
}

fn allowed_ips(c: &mut Criterion) {
    let mut group = c.benchmark_group("allowed_ips");
    group.throughput(Throughput::Elements(1));
    for n in TABLE_SIZES {
        let mut rng = SplitMix64::new(n as u64);
        let prefixes = random_v4_prefixes(n, &mut rng);
        let table = table_of(&prefixes);
        let keys = lookup_addresses(&prefixes, LOOKUP_KEYS, &mut rng);
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("lookup", n), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                table.lookup_v4(black_box(keys[i & (LOOKUP_KEYS - 1)]))
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
}

/// What `criterion_group!`/`criterion_main!` expand to, written out so that the
/// entry point is documented: command-line options, every group, the summary.
fn main() {
    let mut c = config().configure_from_args();
    encapsulate(&mut c);
    decapsulate(&mut c);
    handshake_full(&mut c);
    allowed_ips(&mut c);
    c.final_summary();
}
