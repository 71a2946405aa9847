//! The Internet checksum (RFC 1071): a 16-bit one's-complement sum.
//!
//! [`sum`] reads eight bytes at a time into four independent `u64`
//! accumulators with end-around carry, in native byte order; the one's-complement
//! sum is byte-order independent up to a final byte swap (RFC 1071 §2(B)), so
//! no per-word swapping is needed. All functions return the *folded, not
//! complemented* sum as a big-endian number: write `!sum` into a checksum field,
//! and a packet verifies when the sum over it (with its pseudo-header) is `0xffff`.

/// Folds the big-endian 16-bit words of `data` (an odd trailing byte padded
/// with zero) into `initial` and returns the folded one's-complement sum.
pub fn sum(data: &[u8], initial: u32) -> u16 {
    let native = fold(sum_native(data));
    fold(u64::from(initial) + u64::from(u16::from_be(native)))
}

/// The sum of the TCP/UDP pseudo-header (RFC 793 / RFC 8200 §8.1) for source
/// and destination addresses (4 or 16 bytes each), `protocol`, and the length
/// of the transport header plus payload. Pass it as `initial` to [`sum`].
pub fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8, l4_len: u32) -> u16 {
    let addrs = u32::from(sum(src, 0)) + u32::from(sum(dst, 0));
    let rest = u64::from(protocol) + u64::from(l4_len >> 16) + u64::from(l4_len & 0xffff);
    fold(u64::from(addrs) + rest)
}

/// End-around-carry fold of a wide sum to 16 bits.
fn fold(mut x: u64) -> u16 {
    while x > 0xffff {
        x = (x & 0xffff) + (x >> 16);
    }
    x as u16
}

/// `a + b` with the carry out added back in (cannot overflow: with a carry,
/// the wrapped sum is at most `u64::MAX - 1`).
#[inline(always)]
fn add_carry(a: u64, b: u64) -> u64 {
    let (s, c) = a.overflowing_add(b);
    s + u64::from(c)
}

/// One's-complement sum of `data` as 64-bit native-endian words.
fn sum_native(data: &[u8]) -> u64 {
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
/// word lanes as [`sum_native`] (no `memcpy` into a padded word).
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
    fn all_ones_carries_fold() {
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
