//! Seal and open throughput of the group code against ring, one core:
//! `cargo run --release -p portdistrict-aead --example throughput [LEN]`
//! (LEN = plaintext bytes per message, default 1420; WireGuard pads to 16).

use std::time::{Duration, Instant};

use portdistrict_aead::{available, open_group, seal_group, Message, GROUP, TAG_LEN};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

fn rate(bytes: usize, f: &mut dyn FnMut()) -> f64 {
    let mut n = 0usize;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(700) {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    (n * bytes) as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let len: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1420);
    let key = [9u8; 32];
    let ring_key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
    let mut bufs: Vec<Vec<u8>> = (0..GROUP).map(|_| vec![0x5a; len + TAG_LEN]).collect();
    let mut counter = 0u64;
    let ring_seal = rate(GROUP * len, &mut || {
        for b in bufs.iter_mut() {
            counter += 1;
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&counter.to_le_bytes());
            let (data, tag_out) = b.split_at_mut(len);
            let tag = ring_key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::empty(), data)
                .unwrap();
            tag_out.copy_from_slice(tag.as_ref());
        }
    });
    println!("ring, one message at a time: seal {ring_seal:.2} GB/s");
    if !available() {
        println!("group code: not available on this CPU (needs AVX-512 IFMA)");
        return;
    }
    for n in [1, 2, 4, 8, 12, 16] {
        let seal = rate(n * len, &mut || {
            let mut msgs: Vec<Message<'_>> = bufs[..n]
                .iter_mut()
                .enumerate()
                .map(|(i, buf)| Message {
                    counter: i as u64,
                    buf,
                })
                .collect();
            assert!(seal_group(&key, &mut msgs));
        });
        let mut ok = [false; GROUP];
        let open = rate(n * len, &mut || {
            let mut msgs: Vec<Message<'_>> = bufs[..n]
                .iter_mut()
                .enumerate()
                .map(|(i, buf)| Message {
                    counter: i as u64,
                    buf,
                })
                .collect();
            assert!(open_group(&key, &mut msgs, &mut ok));
        });
        println!(
            "group of {n}: seal {seal:.2} GB/s, open (tag check fails, no decrypt) {open:.2} GB/s"
        );
    }
}
