//! Every group result equals ring's ChaCha20-Poly1305 message by message: lengths 0 to
//! 1,500 bytes (every one up to 200, then a spread) and on up to the longest the group
//! takes ([`MAX_LEN`] with the tag, far above the dataplane's largest data message),
//! every group size, counters that use all 64 bits; opening finds exactly the messages
//! that were tampered with and leaves those untouched. Without AVX-512 IFMA each test
//! says on stderr that the group code went untested (`PD_REQUIRE_AVX512=1`: a failure).

mod common;

use common::{group_code_here, wg_nonce};
use portdistrict_aead::{open_group, seal_group, Message, GROUP, MAX_LEN, TAG_LEN};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn ring_seal(key: &[u8; 32], counter: u64, plain: &[u8]) -> Vec<u8> {
    common::ring_seal(key, wg_nonce(counter), &[], plain)
}

fn lengths() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=200).collect();
    v.extend([
        255, 256, 257, 511, 512, 1023, 1024, 1025, 1280, 1404, 1420, 1436, 1440, 1500,
    ]);
    v
}

#[test]
fn seal_equals_ring() {
    if !group_code_here("seal_equals_ring") {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for len in lengths() {
        for n in 1..=GROUP {
            let mut key = [0u8; 32];
            rng.fill_bytes(&mut key);
            let plains: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    let mut p = vec![0u8; len];
                    rng.fill_bytes(&mut p);
                    p
                })
                .collect();
            let counters: Vec<u64> = (0..n).map(|i| rng.next_u64() >> ((i * 7) % 64)).collect();
            let mut bufs: Vec<Vec<u8>> = plains
                .iter()
                .map(|p| {
                    let mut b = p.clone();
                    b.extend_from_slice(&[0u8; TAG_LEN]);
                    b
                })
                .collect();
            let mut msgs: Vec<Message<'_>> = bufs
                .iter_mut()
                .zip(&counters)
                .map(|(buf, &counter)| Message { counter, buf })
                .collect();
            assert!(seal_group(&key, &mut msgs));
            for i in 0..n {
                assert_eq!(
                    bufs[i],
                    ring_seal(&key, counters[i], &plains[i]),
                    "len {len}, group of {n}, message {i}"
                );
            }
        }
    }
}

#[test]
fn open_equals_ring_and_rejects_tampering() {
    if !group_code_here("open_equals_ring_and_rejects_tampering") {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for len in lengths() {
        for n in 1..=GROUP {
            let mut key = [0u8; 32];
            rng.fill_bytes(&mut key);
            let counters: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
            let plains: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    let mut p = vec![0u8; len];
                    rng.fill_bytes(&mut p);
                    p
                })
                .collect();
            let mut bufs: Vec<Vec<u8>> = (0..n)
                .map(|i| ring_seal(&key, counters[i], &plains[i]))
                .collect();
            // Tamper with some: a ciphertext bit, a tag bit, or the wrong counter.
            let mut bad = vec![false; n];
            let mut counters_used = counters.clone();
            for i in 0..n {
                match rng.next_u32() % 5 {
                    0 if len > 0 => {
                        let at = rng.next_u32() as usize % len;
                        bufs[i][at] ^= 1 << (rng.next_u32() % 8);
                        bad[i] = true;
                    }
                    1 => {
                        let at = len + rng.next_u32() as usize % TAG_LEN;
                        bufs[i][at] ^= 0x80;
                        bad[i] = true;
                    }
                    2 => {
                        counters_used[i] ^= 1 << (rng.next_u32() % 64);
                        bad[i] = true;
                    }
                    _ => {}
                }
            }
            let before = bufs.clone();
            let mut ok = [false; GROUP];
            let mut msgs: Vec<Message<'_>> = bufs
                .iter_mut()
                .zip(&counters_used)
                .map(|(buf, &counter)| Message { counter, buf })
                .collect();
            assert!(open_group(&key, &mut msgs, &mut ok));
            for i in 0..n {
                assert_eq!(ok[i], !bad[i], "len {len}, group of {n}, message {i}");
                if bad[i] {
                    assert_eq!(bufs[i], before[i], "a failed message is left as it was");
                } else {
                    assert_eq!(&bufs[i][..len], &plains[i][..], "len {len}, message {i}");
                }
            }
        }
    }
}

#[test]
fn groups_it_cannot_take_are_left_untouched() {
    let key = [7u8; 32];
    let mut a = vec![1u8; 100];
    let mut b = vec![2u8; 101];
    let mut msgs = vec![
        Message {
            counter: 0,
            buf: &mut a,
        },
        Message {
            counter: 1,
            buf: &mut b,
        },
    ];
    assert!(!seal_group(&key, &mut msgs), "unequal lengths");
    assert!(!seal_group(&key, &mut []), "empty");
    let mut short = vec![0u8; 15];
    assert!(
        !seal_group(
            &key,
            &mut [Message {
                counter: 0,
                buf: &mut short
            }]
        ),
        "shorter than a tag"
    );
    let mut bufs: Vec<Vec<u8>> = (0..GROUP + 1).map(|_| vec![3u8; 64]).collect();
    let mut nine: Vec<Message<'_>> = bufs
        .iter_mut()
        .map(|buf| Message { counter: 0, buf })
        .collect();
    assert!(!seal_group(&key, &mut nine), "more than GROUP");
    let mut ok = [false; 1];
    assert!(!open_group(&key, &mut nine[..2], &mut ok), "ok too short");
    drop(nine);
    assert!(bufs.iter().all(|b| b.iter().all(|&x| x == 3)));
    assert!(a.iter().all(|&x| x == 1) && b.iter().all(|&x| x == 2));
    assert!(short.iter().all(|&x| x == 0));
}

/// Plaintext lengths above 1,500 bytes: jumbo frames, the 16, 32 and 64 KiB
/// boundaries (and ChaCha20's 64-byte blocks and Poly1305's 16-byte ones around them),
/// the tunnel MTUs the dataplane allows (34,816 and up), its largest data message
/// (65,535 bytes of plaintext, padded to at most the MTU), and the group code's limit.
fn big_lengths() -> Vec<usize> {
    let limit = MAX_LEN - TAG_LEN;
    vec![
        1501,
        1536,
        2047,
        4096,
        8191,
        9000,
        16383,
        16384,
        16385,
        16400,
        32767,
        32768,
        32769,
        34816,
        34817,
        65519,
        65520,
        65535,
        65536,
        65537,
        131_085,
        limit - 1,
        limit,
    ]
}

/// Group sizes tried at a length: all up to 64 KiB and a bit, then a few (each group
/// of 16 at 1 MiB is 16 MiB of work).
fn sizes_for(len: usize) -> Vec<usize> {
    if len <= 65537 {
        (1..=GROUP).collect()
    } else {
        vec![1, 2, 8, 9, 16]
    }
}

#[test]
fn big_lengths_equal_ring_up_to_the_limit() {
    if !group_code_here("big_lengths_equal_ring_up_to_the_limit") {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for len in big_lengths() {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let mut plain = vec![0u8; len];
        rng.fill_bytes(&mut plain);
        for n in sizes_for(len) {
            // One plaintext per group (ring's work is the slow part in debug builds),
            // counters differ per message, so every keystream differs.
            let counters: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
            let mut bufs: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    let mut b = plain.clone();
                    b.resize(len + TAG_LEN, 0);
                    b
                })
                .collect();
            let mut msgs: Vec<Message<'_>> = bufs
                .iter_mut()
                .zip(&counters)
                .map(|(buf, &counter)| Message { counter, buf })
                .collect();
            assert!(seal_group(&key, &mut msgs), "len {len}, group of {n}");
            for i in 0..n {
                assert!(
                    bufs[i] == ring_seal(&key, counters[i], &plain),
                    "seal: len {len}, group of {n}, message {i}"
                );
            }
            // Open them back with one message tampered: in its last byte of
            // ciphertext, or at the 16 KiB mark when it has one.
            let victim = (n - 1) / 2;
            let at = if len > 16384 { 16384 } else { len - 1 };
            bufs[victim][at] ^= 0x40;
            let tampered = bufs[victim].clone();
            let mut ok = [false; GROUP];
            let mut msgs: Vec<Message<'_>> = bufs
                .iter_mut()
                .zip(&counters)
                .map(|(buf, &counter)| Message { counter, buf })
                .collect();
            assert!(
                open_group(&key, &mut msgs, &mut ok),
                "len {len}, group of {n}"
            );
            for i in 0..n {
                assert_eq!(
                    ok[i],
                    i != victim,
                    "open: len {len}, group of {n}, message {i}"
                );
                if i == victim {
                    assert!(bufs[i] == tampered, "a failed message is left as it was");
                } else {
                    assert!(bufs[i][..len] == plain[..], "open: len {len}, message {i}");
                }
            }
        }
    }
}

#[test]
fn longer_than_the_limit_is_refused_untouched() {
    let key = [9u8; 32];
    let mut over = vec![5u8; MAX_LEN + 1];
    let mut at = vec![5u8; MAX_LEN];
    assert!(!seal_group(
        &key,
        &mut [Message {
            counter: 1,
            buf: &mut over
        }]
    ));
    assert!(over.iter().all(|&b| b == 5));
    let mut ok = [false; 1];
    assert!(!open_group(
        &key,
        &mut [Message {
            counter: 1,
            buf: &mut over
        }],
        &mut ok
    ));
    assert!(over.iter().all(|&b| b == 5));
    if group_code_here("longer_than_the_limit_is_refused_untouched") {
        assert!(seal_group(
            &key,
            &mut [Message {
                counter: 1,
                buf: &mut at
            }]
        ));
        assert!(at == ring_seal(&key, 1, &vec![5u8; MAX_LEN - TAG_LEN]));
    }
}
