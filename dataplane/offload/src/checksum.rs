//! The Internet checksum (RFC 1071): a 16-bit one's-complement sum.
//!
//! The sum is byte-order independent up to a final byte swap (RFC 1071 §2(B)), so
//! words are added in native byte order: 64-byte blocks as sixteen 32-bit words into
//! sixteen `u64` lanes (no carries to propagate; the compiler turns this into vector
//! adds, and with AVX2, found at run time, into 256-bit ones), the rest as 64-bit
//! words with end-around carry. [`copy_sum`] copies while it sums, so a packet that
//! is copied anyway is read once. All functions return the *folded, not
//! complemented* sum as a big-endian number: write `!sum` into a checksum field,
//! and a packet verifies when the sum over it (with its pseudo-header) is `0xffff`.
//! Sums of pieces that start at even offsets add up ([`add`]) to the sum of the
//! whole.

/// Folds the big-endian 16-bit words of `data` (an odd trailing byte padded
/// with zero) into `initial` and returns the folded one's-complement sum.
#[inline]
pub fn sum(data: &[u8], initial: u32) -> u16 {
    let native = fold(sum_native(data));
    fold(u64::from(initial) + u64::from(u16::from_be(native)))
}

/// The sum of the TCP/UDP pseudo-header (RFC 793 / RFC 8200 §8.1) for source
/// and destination addresses (4 or 16 bytes each), `protocol`, and the length
/// of the transport header plus payload. Pass it as `initial` to [`sum`].
pub fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8, l4_len: u32) -> u16 {
    // Big-endian 16-bit words straight into one wide sum: addresses are short, and
    // this runs for every packet split or merged.
    let words = |a: &[u8]| -> u64 {
        let (pairs, odd) = a.as_chunks::<2>();
        let odd = odd.first().map_or(0, |&b| u64::from(b) << 8);
        pairs
            .iter()
            .fold(odd, |acc, w| acc + u64::from(u16::from_be_bytes(*w)))
    };
    let rest = u64::from(protocol) + u64::from(l4_len >> 16) + u64::from(l4_len & 0xffff);
    fold(words(src) + words(dst) + rest)
}

/// Copies `src` into `dst` (of the same length) and returns `sum(src, 0)`: one pass
/// over the bytes instead of a copy and a sum.
///
/// # Panics
/// If the lengths differ.
pub fn copy_sum(dst: &mut [u8], src: &[u8]) -> u16 {
    assert_eq!(dst.len(), src.len(), "copy_sum: lengths differ");
    u16::from_be(fold(copy_sum_native(dst, src)))
}

/// The one's-complement sum of two folded sums: `sum(a ++ b) == add(sum(a), sum(b))`
/// when `a` has an even length.
pub fn add(a: u16, b: u16) -> u16 {
    fold(u64::from(a) + u64::from(b))
}

/// End-around-carry fold of a wide sum to 16 bits (no loop: each step at least
/// halves the width, and the last two absorb the carries).
#[inline]
fn fold(x: u64) -> u16 {
    let x = (x & 0xffff_ffff) + (x >> 32); // < 2^33
    let x = (x & 0xffff) + (x >> 16); // < 2^17 + 2^16
    let x = (x & 0xffff) + (x >> 16); // <= 0xffff + 2
    let x = (x & 0xffff) + (x >> 16); // <= 0xffff
    x as u16
}

/// `a + b` with the carry out added back in (cannot overflow: with a carry,
/// the wrapped sum is at most `u64::MAX - 1`).
#[inline(always)]
fn add_carry(a: u64, b: u64) -> u64 {
    let (s, c) = a.overflowing_add(b);
    s + u64::from(c)
}

/// Blocks of the wide loops: 64 bytes, summed as sixteen 32-bit words.
const BLOCK: usize = 64;
/// Most blocks summed into the `u64` lanes before they are folded: each lane takes
/// one 32-bit word per block, so 2^31 blocks cannot overflow it.
const RUN: usize = 1 << 31;
/// Shorter inputs skip the feature check and vector set-up.
const WIDE_MIN: usize = 256;

/// One's-complement sum of `data` as native-endian words (not yet folded).
fn sum_native(data: &[u8]) -> u64 {
    // Headers and addresses: no blocks, no lanes to fold.
    if data.len() < BLOCK {
        return sum_words(data);
    }
    #[cfg(target_arch = "x86_64")]
    if data.len() >= WIDE_MIN && std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: `sum_native_avx2` only requires AVX2, which the CPU has (checked
        // just above); it is otherwise ordinary safe code over `data`.
        return unsafe { sum_native_avx2(data) };
    }
    sum_wide(data)
}

/// [`sum_wide`] compiled for AVX2 (the same code; the vector adds are 256 bits wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_native_avx2(data: &[u8]) -> u64 {
    sum_wide(data)
}

/// Whole blocks through [`sum_blocks`], the rest through [`sum_words`].
#[inline(always)]
fn sum_wide(data: &[u8]) -> u64 {
    let (blocks, rest) = data.as_chunks::<BLOCK>();
    let mut total = 0;
    for run in blocks.chunks(RUN) {
        total = add_carry(total, sum_blocks(run));
    }
    add_carry(total, sum_words(rest))
}

/// Sixteen `u64` lanes, each adding one 32-bit word of every block.
type Lanes = [u64; BLOCK / 4];

/// Adds the sixteen 32-bit words of `block` to `lanes`.
#[inline(always)]
fn add_block(lanes: &mut Lanes, block: &[u8; BLOCK]) {
    let (words, _) = block.as_chunks::<4>();
    for (lane, w) in lanes.iter_mut().zip(words) {
        *lane += u64::from(u32::from_ne_bytes(*w));
    }
}

/// The lanes' total, with end-around carry.
#[inline(always)]
fn fold_lanes(lanes: &Lanes) -> u64 {
    lanes.iter().fold(0, |acc, &l| add_carry(acc, l))
}

/// The sum of whole blocks, in lanes.
#[inline(always)]
fn sum_blocks(blocks: &[[u8; BLOCK]]) -> u64 {
    let mut lanes = [0u64; BLOCK / 4];
    for block in blocks {
        add_block(&mut lanes, block);
    }
    fold_lanes(&lanes)
}

/// [`copy_sum`]'s unfolded native sum, dispatched like [`sum_native`].
fn copy_sum_native(dst: &mut [u8], src: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if src.len() >= WIDE_MIN && std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: `copy_sum_avx2` only requires AVX2, which the CPU has (checked
        // just above); it is otherwise ordinary safe code over the two slices.
        return unsafe { copy_sum_avx2(dst, src) };
    }
    copy_sum_wide(dst, src)
}

/// [`copy_sum_wide`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn copy_sum_avx2(dst: &mut [u8], src: &[u8]) -> u64 {
    copy_sum_wide(dst, src)
}

/// Copies block by block, summing each block as it is copied.
#[inline(always)]
fn copy_sum_wide(dst: &mut [u8], src: &[u8]) -> u64 {
    let (blocks, rest) = src.as_chunks::<BLOCK>();
    let (dst_blocks, dst_rest) = dst.as_chunks_mut::<BLOCK>();
    let mut total = 0;
    for (run, dst_run) in blocks.chunks(RUN).zip(dst_blocks.chunks_mut(RUN)) {
        let mut lanes = [0u64; BLOCK / 4];
        for (block, out) in run.iter().zip(dst_run.iter_mut()) {
            *out = *block;
            add_block(&mut lanes, block);
        }
        total = add_carry(total, fold_lanes(&lanes));
    }
    dst_rest.copy_from_slice(rest);
    add_carry(total, sum_words(rest))
}

/// One's-complement sum of `data` as 64-bit native-endian words.
fn sum_words(data: &[u8]) -> u64 {
    let (words, rest) = data.as_chunks::<8>();
    let (quads, single) = words.as_chunks::<4>();
    let mut acc = [0u64; 4];
    for quad in quads {
        for (a, w) in acc.iter_mut().zip(quad) {
            *a = add_carry(*a, u64::from_ne_bytes(*w));
        }
    }
    for w in single {
        acc[0] = add_carry(acc[0], u64::from_ne_bytes(*w));
    }
    let low = add_carry(acc[0], acc[1]);
    let high = add_carry(acc[2], acc[3]);
    add_carry(add_carry(low, high), sum_tail(rest))
}

/// Sum of the last 0..=7 bytes, zero-padded at the end, in the same native
/// word lanes as [`sum_words`] (no `memcpy` into a padded word).
#[inline(always)]
fn sum_tail(rest: &[u8]) -> u64 {
    let (quad, rest) = rest.as_chunks::<4>();
    let (pairs, odd) = rest.as_chunks::<2>();
    let mut acc = quad
        .first()
        .map_or(0, |w| u64::from(u32::from_ne_bytes(*w)));
    acc += pairs
        .first()
        .map_or(0, |w| u64::from(u16::from_ne_bytes(*w)));
    acc + odd
        .first()
        .map_or(0, |&b| u64::from(u16::from_ne_bytes([b, 0])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{naive_sum, Rng};

    #[test]
    fn matches_naive_sum_for_every_length() {
        let mut rng = Rng(0x5eed);
        let mut data = vec![0u8; 2000];
        for len in 0..2000 {
            rng.fill(&mut data[..len]);
            let initial = rng.next() as u32 & 0x3_ffff;
            let got = sum(&data[..len], initial);
            assert_eq!(got, naive_sum(&data[..len], initial), "len {len}");
            // Also from an odd starting offset (unaligned reads).
            if len > 0 {
                assert_eq!(
                    sum(&data[1..len], 0),
                    naive_sum(&data[1..len], 0),
                    "len {len}"
                );
            }
        }
    }

    #[test]
    fn wide_and_copying_sums_match_naive_sum() {
        let mut rng = Rng(0xc0ffee);
        let mut data = vec![0u8; 70_000];
        rng.fill(&mut data);
        let mut out = vec![0u8; 70_000];
        let lens = (0..700).chain([1024, 1407, 1408, 1409, 4096, 65_535, 65_536, 69_996]);
        for len in lens {
            for start in [0, 1, 3] {
                let src = &data[start..start + len];
                let want = naive_sum(src, 0);
                assert_eq!(sum(src, 0), want, "sum len {len} start {start}");
                assert_eq!(
                    u16::from_be(fold(sum_wide(src))),
                    want,
                    "portable len {len}"
                );
                let dst = &mut out[..len];
                dst.fill(0x5a);
                assert_eq!(copy_sum(dst, src), want, "copy_sum len {len} start {start}");
                assert_eq!(dst, src, "copy_sum copied len {len} start {start}");
                dst.fill(0xa5);
                assert_eq!(u16::from_be(fold(copy_sum_wide(dst, src))), want);
                assert_eq!(dst, src);
            }
        }
    }

    #[test]
    fn sums_of_even_pieces_add_up() {
        let mut rng = Rng(7);
        let mut data = vec![0u8; 3000];
        rng.fill(&mut data);
        for cut in (0..3000).step_by(2) {
            let (a, b) = data.split_at(cut);
            assert_eq!(add(sum(a, 0), sum(b, 0)), naive_sum(&data, 0), "cut {cut}");
        }
    }

    #[test]
    fn all_ones_carries_fold() {
        let big = vec![0xffu8; 65_536];
        assert_eq!(sum(&big, 0), naive_sum(&big, 0));
        let mut out = vec![0u8; 65_536];
        assert_eq!(copy_sum(&mut out, &big), naive_sum(&big, 0));
        let data = [0xffu8; 1999];
        assert_eq!(sum(&data, 0xffff_ffff), naive_sum(&data, 0xffff_ffff));
        assert_eq!(sum(&data, 0), naive_sum(&data, 0));
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2.
        assert_eq!(
            sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0),
            0xddf2
        );
        assert_eq!(sum(&[], 0), 0);
        assert_eq!(sum(&[0xab], 0), 0xab00);
    }

    #[test]
    fn pseudo_header_matches_explicit_bytes() {
        let src = [10, 0, 0, 1];
        let dst = [192, 168, 7, 200];
        let explicit = [10, 0, 0, 1, 192, 168, 7, 200, 0, 6, 0x05, 0xdc];
        assert_eq!(pseudo_header(&src, &dst, 6, 1500), naive_sum(&explicit, 0));
        let src6 = [0xfe; 16];
        let dst6 = [0x20; 16];
        let mut explicit6 = Vec::new();
        explicit6.extend_from_slice(&src6);
        explicit6.extend_from_slice(&dst6);
        explicit6.extend_from_slice(&[0, 1, 0x23, 0x45, 0, 0, 0, 17]);
        assert_eq!(
            pseudo_header(&src6, &dst6, 17, 0x1_2345),
            naive_sum(&explicit6, 0)
        );
    }
}
