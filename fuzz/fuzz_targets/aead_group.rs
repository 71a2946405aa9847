//! The AVX-512 group AEAD against ring: the input picks the key, the group size, the
//! length (up to 64 KiB), the counters and the plaintexts. Sealing as a group must
//! give ring's bytes message by message; opening must restore every plaintext, and a
//! flipped byte in one message must fail exactly that message and leave it as it was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portdistrict_aead::{available, open_group, seal_group, Message, GROUP, TAG_LEN};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

fuzz_target!(|data: &[u8]| {
    if !available() || data.len() < 32 + 4 {
        return;
    }
    let (head, rest) = data.split_at(36);
    let key: [u8; 32] = head[..32].try_into().unwrap();
    let n = 1 + usize::from(head[32]) % GROUP;
    // Mostly short messages (fast to fuzz); with the top bit set, any length up to
    // 64 KiB, the dataplane's largest data messages.
    let raw = u16::from_le_bytes([head[33], head[34]]);
    let len = if raw & 0x8000 == 0 {
        usize::from(raw) % 2048
    } else {
        usize::from(raw & 0x7fff) * 2 + usize::from(raw & 1) + 1
    };
    let flip = head[35];
    let ring_key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
    let mut plains = Vec::new();
    let mut counters = Vec::new();
    for i in 0..n {
        let p: Vec<u8> = (0..len)
            .map(|j| rest.get((i * len + j) % rest.len().max(1)).copied().unwrap_or(0) ^ i as u8)
            .collect();
        plains.push(p);
        let c = rest.iter().skip(i * 8).take(8).fold(i as u64, |a, &b| a.rotate_left(8) ^ u64::from(b));
        counters.push(c);
    }
    let mut bufs: Vec<Vec<u8>> = plains
        .iter()
        .map(|p| {
            let mut b = p.clone();
            b.resize(len + TAG_LEN, 0);
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
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counters[i].to_le_bytes());
        let mut expected = plains[i].clone();
        ring_key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut expected)
            .unwrap();
        assert_eq!(bufs[i], expected, "message {i} of {n}, {len} bytes");
    }
    let victim = usize::from(flip) % n;
    let at = usize::from(flip) * 7 % (len + TAG_LEN);
    bufs[victim][at] ^= 1 + (flip >> 1);
    let tampered = bufs[victim].clone();
    let mut ok = [false; GROUP];
    let mut msgs: Vec<Message<'_>> = bufs
        .iter_mut()
        .zip(&counters)
        .map(|(buf, &counter)| Message { counter, buf })
        .collect();
    assert!(open_group(&key, &mut msgs, &mut ok));
    for i in 0..n {
        assert_eq!(ok[i], i != victim, "message {i}");
        if i == victim {
            assert_eq!(bufs[i], tampered);
        } else {
            assert_eq!(&bufs[i][..len], &plains[i][..]);
        }
    }
});
