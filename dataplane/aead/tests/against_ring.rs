//! Every group result equals ring's ChaCha20-Poly1305 message by message: lengths 0 to
//! 1,500 bytes (every one up to 200, then a spread), every group size, counters that
//! use all 64 bits; opening finds exactly the messages that were tampered with and
//! leaves those untouched.

use portdistrict_aead::{available, open_group, seal_group, Message, GROUP, TAG_LEN};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

fn ring_seal(key: &[u8; 32], counter: u64, plain: &[u8]) -> Vec<u8> {
    let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).unwrap());
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    let mut buf = plain.to_vec();
    k.seal_in_place_append_tag(Nonce::assume_unique_for_key(n), Aad::empty(), &mut buf)
        .unwrap();
    buf
}

fn lengths() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=200).collect();
    v.extend([
        255, 256, 257, 511, 512, 1023, 1024, 1025, 1280, 1404, 1420, 1436, 1440, 1500,
    ]);
    v
}

fn require_cpu() -> bool {
    if !available() {
        eprintln!("skipped: this CPU lacks AVX-512 IFMA (the group code is not used here)");
        return false;
    }
    true
}

#[test]
fn seal_equals_ring() {
    if !require_cpu() {
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
    if !require_cpu() {
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
