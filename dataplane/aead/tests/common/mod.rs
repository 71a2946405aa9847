//! What the group-code tests share: the CPU check and ring as the reference.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use std::io::Write;

/// Whether the group code runs on this CPU. Where it does not (no AVX-512 IFMA),
/// `test` says on stderr that the group code went untested and passes, unless
/// `PD_REQUIRE_AVX512=1`: then that is a failure (for machines known to have it).
/// `PD_TEST_AS_IF_NO_AVX512=1` takes this path on any CPU (to check it).
pub(crate) fn group_code_here(test: &str) -> bool {
    let as_if_not = std::env::var("PD_TEST_AS_IF_NO_AVX512").as_deref() == Ok("1");
    if portdistrict_aead::available() && !as_if_not {
        return true;
    }
    let msg = format!(
        "{test}: SKIPPED, the AVX-512 group code was NOT tested: this CPU lacks AVX-512 \
         F/BW/VL/IFMA (PD_REQUIRE_AVX512=1 makes this a failure)"
    );
    if std::env::var("PD_REQUIRE_AVX512").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    // Through the stderr handle, not `eprintln!`: the test harness captures the
    // latter and shows it only for failing tests, so a skip would pass silently.
    let _ = writeln!(std::io::stderr(), "{msg}");
    false
}

/// ring's ChaCha20-Poly1305 seal: ciphertext followed by the tag.
pub(crate) fn ring_seal(key: &[u8; 32], nonce: [u8; 12], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).unwrap());
    let mut buf = plain.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .unwrap();
    buf
}

/// WireGuard's nonce: four zero bytes, then the counter in little endian.
pub(crate) fn wg_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}
