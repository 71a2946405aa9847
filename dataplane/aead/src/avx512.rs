//! The AVX-512 kernel: sixteen ChaCha20 blocks per step (one per 32-bit lane, then a
//! 16x16 transpose so each register holds one block's keystream) and Poly1305 over
//! sixteen messages at once (two registers of eight 64-bit lanes, one message per
//! lane, radix 2^44, IFMA products).
//!
//! Every function is compiled for AVX-512 F/BW/VL/IFMA; [`seal`] and [`open`] enter
//! them only after [`detected`] said the CPU has all four (checked by the caller,
//! `crate::applicable`, and asserted again here).

use core::arch::x86_64::*;

use subtle::ConstantTimeEq;

use crate::{Message, GROUP, TAG_LEN};

/// AVX-512 F, BW (byte masks), VL and IFMA (52-bit multiplies).
pub(crate) fn detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512ifma")
}

/// "expand 32-byte k".
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];
const M44: u64 = (1 << 44) - 1;
const M42: u64 = (1 << 42) - 1;
/// Poly1305's clamp of `r`.
const CLAMP: u128 = 0x0fff_fffc_0fff_fffc_0fff_fffc_0fff_ffff;

pub(crate) fn seal(key: &[u8; 32], prefix: u32, msgs: &mut [Message<'_>]) {
    assert!(
        detected(),
        "AVX-512 group code entered without the CPU for it"
    );
    // SAFETY: the CPU has AVX-512 F, BW, VL and IFMA (asserted above).
    unsafe { seal_avx512(key, prefix, msgs) }
}

pub(crate) fn open(key: &[u8; 32], prefix: u32, msgs: &mut [Message<'_>], ok: &mut [bool]) {
    assert!(
        detected(),
        "AVX-512 group code entered without the CPU for it"
    );
    // SAFETY: the CPU has AVX-512 F, BW, VL and IFMA (asserted above).
    unsafe { open_avx512(key, prefix, msgs, ok) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512ifma")]
fn seal_avx512(key: &[u8; 32], prefix: u32, msgs: &mut [Message<'_>]) {
    let n = msgs.len().min(GROUP);
    let len = msgs[0].buf.len() - TAG_LEN;
    let kw = key_words(key);
    let n0 = _mm512_set1_epi32(prefix as i32);
    let mut counters = [0u64; GROUP];
    let mut ptrs = [std::ptr::null_mut::<u8>(); GROUP];
    for (i, m) in msgs[..n].iter_mut().enumerate() {
        counters[i] = m.counter;
        ptrs[i] = m.buf.as_mut_ptr();
    }
    let keys = poly_keys(&kw, n0, &counters[..n]);
    // SAFETY: `ptrs[..n]` point at the starts of `n` distinct exclusively borrowed
    // buffers of `len + 16` bytes each, not otherwise used until this returns.
    unsafe { xor_keystream(&kw, n0, &ptrs[..n], &counters[..n], len) };
    let tags = poly1305(&keys[..n], &msgs[..n], len);
    for (m, tag) in msgs[..n].iter_mut().zip(tags) {
        m.buf[len..].copy_from_slice(&tag);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512ifma")]
fn open_avx512(key: &[u8; 32], prefix: u32, msgs: &mut [Message<'_>], ok: &mut [bool]) {
    let n = msgs.len().min(GROUP);
    let len = msgs[0].buf.len() - TAG_LEN;
    let kw = key_words(key);
    let n0 = _mm512_set1_epi32(prefix as i32);
    let mut counters = [0u64; GROUP];
    for (i, m) in msgs[..n].iter().enumerate() {
        counters[i] = m.counter;
    }
    let keys = poly_keys(&kw, n0, &counters[..n]);
    let tags = poly1305(&keys[..n], &msgs[..n], len);
    let mut good = 0;
    let mut good_ptrs = [std::ptr::null_mut::<u8>(); GROUP];
    let mut good_counters = [0u64; GROUP];
    for (i, m) in msgs[..n].iter_mut().enumerate() {
        // One 128-bit constant-time comparison instead of sixteen byte ones.
        let mut got = [0u8; TAG_LEN];
        got.copy_from_slice(&m.buf[len..]);
        ok[i] = bool::from(u128::from_le_bytes(tags[i]).ct_eq(&u128::from_le_bytes(got)));
        if ok[i] {
            good_ptrs[good] = m.buf.as_mut_ptr();
            good_counters[good] = m.counter;
            good += 1;
        }
    }
    // SAFETY: as in `seal_avx512`: distinct exclusively borrowed buffers of `len + 16`.
    unsafe { xor_keystream(&kw, n0, &good_ptrs[..good], &good_counters[..good], len) };
}

/// The key as eight little-endian words, each broadcast to every lane.
#[target_feature(enable = "avx512f")]
fn key_words(key: &[u8; 32]) -> [__m512i; 8] {
    std::array::from_fn(|i| {
        let w = u32::from_le_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]]);
        _mm512_set1_epi32(w as i32)
    })
}

#[target_feature(enable = "avx512f")]
fn load_u32(a: &[u32; 16]) -> __m512i {
    // SAFETY: reads the 64 bytes of `a`; unaligned loads are allowed.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f")]
fn load_u64(a: &[u64; 8]) -> __m512i {
    // SAFETY: reads the 64 bytes of `a`; unaligned loads are allowed.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f")]
fn store_u64(v: __m512i) -> [u64; 8] {
    let mut a = [0u64; 8];
    // SAFETY: writes the 64 bytes of `a`; unaligned stores are allowed.
    unsafe { _mm512_storeu_si512(a.as_mut_ptr().cast(), v) };
    a
}

macro_rules! quarter {
    ($x:ident, $a:literal, $b:literal, $c:literal, $d:literal) => {
        $x[$a] = _mm512_add_epi32($x[$a], $x[$b]);
        $x[$d] = _mm512_rol_epi32::<16>(_mm512_xor_si512($x[$d], $x[$a]));
        $x[$c] = _mm512_add_epi32($x[$c], $x[$d]);
        $x[$b] = _mm512_rol_epi32::<12>(_mm512_xor_si512($x[$b], $x[$c]));
        $x[$a] = _mm512_add_epi32($x[$a], $x[$b]);
        $x[$d] = _mm512_rol_epi32::<8>(_mm512_xor_si512($x[$d], $x[$a]));
        $x[$c] = _mm512_add_epi32($x[$c], $x[$d]);
        $x[$b] = _mm512_rol_epi32::<7>(_mm512_xor_si512($x[$b], $x[$c]));
    };
}

/// Sixteen ChaCha20 blocks: lane `j` has block counter `ctr[j]` and nonce words
/// `n0[j], nlo[j], nhi[j]` (`n0` is zero for WireGuard). Returns the keystream,
/// register `j` = block of lane `j`.
#[target_feature(enable = "avx512f")]
fn blocks16(
    kw: &[__m512i; 8],
    ctr: __m512i,
    n0: __m512i,
    nlo: __m512i,
    nhi: __m512i,
) -> [__m512i; 16] {
    let s: [__m512i; 16] = [
        _mm512_set1_epi32(SIGMA[0] as i32),
        _mm512_set1_epi32(SIGMA[1] as i32),
        _mm512_set1_epi32(SIGMA[2] as i32),
        _mm512_set1_epi32(SIGMA[3] as i32),
        kw[0],
        kw[1],
        kw[2],
        kw[3],
        kw[4],
        kw[5],
        kw[6],
        kw[7],
        ctr,
        n0,
        nlo,
        nhi,
    ];
    let mut x = s;
    for _ in 0..10 {
        quarter!(x, 0, 4, 8, 12);
        quarter!(x, 1, 5, 9, 13);
        quarter!(x, 2, 6, 10, 14);
        quarter!(x, 3, 7, 11, 15);
        quarter!(x, 0, 5, 10, 15);
        quarter!(x, 1, 6, 11, 12);
        quarter!(x, 2, 7, 8, 13);
        quarter!(x, 3, 4, 9, 14);
    }
    for i in 0..16 {
        x[i] = _mm512_add_epi32(x[i], s[i]);
    }
    transpose(x)
}

/// Register `w` holds word `w` of sixteen blocks; afterwards register `j` holds the
/// sixteen words of block `j`. A 4x4 transpose of words inside each 128-bit chunk,
/// then a 4x4 transpose of the chunks.
#[target_feature(enable = "avx512f")]
fn transpose(x: [__m512i; 16]) -> [__m512i; 16] {
    let mut y = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let (p0, p1, p2, p3) = (x[4 * g], x[4 * g + 1], x[4 * g + 2], x[4 * g + 3]);
        let t0 = _mm512_unpacklo_epi32(p0, p1);
        let t1 = _mm512_unpackhi_epi32(p0, p1);
        let t2 = _mm512_unpacklo_epi32(p2, p3);
        let t3 = _mm512_unpackhi_epi32(p2, p3);
        y[4 * g] = _mm512_unpacklo_epi64(t0, t2);
        y[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
        y[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
        y[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
    }
    // y[4g + k], chunk c: words 4g..4g+4 of block 4c + k.
    let mut out = [_mm512_setzero_si512(); 16];
    for k in 0..4 {
        let (y0, y1, y2, y3) = (y[k], y[4 + k], y[8 + k], y[12 + k]);
        let a0 = _mm512_shuffle_i32x4::<0b10_00_10_00>(y0, y1);
        let a1 = _mm512_shuffle_i32x4::<0b11_01_11_01>(y0, y1);
        let a2 = _mm512_shuffle_i32x4::<0b10_00_10_00>(y2, y3);
        let a3 = _mm512_shuffle_i32x4::<0b11_01_11_01>(y2, y3);
        out[k] = _mm512_shuffle_i32x4::<0b10_00_10_00>(a0, a2);
        out[4 + k] = _mm512_shuffle_i32x4::<0b10_00_10_00>(a1, a3);
        out[8 + k] = _mm512_shuffle_i32x4::<0b11_01_11_01>(a0, a2);
        out[12 + k] = _mm512_shuffle_i32x4::<0b11_01_11_01>(a1, a3);
    }
    out
}

/// Block 0 of each message's keystream: its one-time Poly1305 key (r, s).
#[target_feature(enable = "avx512f")]
fn poly_keys(kw: &[__m512i; 8], n0: __m512i, counters: &[u64]) -> [[u8; 32]; GROUP] {
    let mut nlo = [0u32; 16];
    let mut nhi = [0u32; 16];
    for (i, c) in counters.iter().enumerate().take(16) {
        nlo[i] = *c as u32;
        nhi[i] = (*c >> 32) as u32;
    }
    let ks = blocks16(
        kw,
        _mm512_setzero_si512(),
        n0,
        load_u32(&nlo),
        load_u32(&nhi),
    );
    let mut keys = [[0u8; 32]; GROUP];
    for (i, k) in keys.iter_mut().enumerate().take(counters.len()) {
        let mut block = [0u8; 64];
        // SAFETY: writes the 64 bytes of `block`.
        unsafe { _mm512_storeu_si512(block.as_mut_ptr().cast(), ks[i]) };
        k.copy_from_slice(&block[..32]);
    }
    keys
}

/// XORs the keystream from block 1 on into the first `len` bytes of every message.
/// The (message, block) pairs are laid out flat, sixteen per step.
///
/// # Safety
/// Each `ptrs[i]` must be valid for reads and writes of `len` bytes, the ranges must
/// not overlap, and nothing else may access them during the call.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn xor_keystream(
    kw: &[__m512i; 8],
    n0: __m512i,
    ptrs: &[*mut u8],
    counters: &[u64],
    len: usize,
) {
    let per = len.div_ceil(64);
    let total = ptrs.len() * per;
    // Every message's counter halves, indexed by message (at most sixteen), so that a
    // lane's nonce words are one permute of its message index: the lane set-up stays
    // in registers (building it in arrays stalled each step on store forwarding).
    let mut lo = [0u32; 16];
    let mut hi = [0u32; 16];
    for (i, c) in counters.iter().enumerate().take(16) {
        lo[i] = *c as u32;
        hi[i] = (*c >> 32) as u32;
    }
    let (lo, hi) = (load_u32(&lo), load_u32(&hi));
    let per_v = _mm512_set1_epi32(per as i32);
    let one = _mm512_set1_epi32(1);
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let mut idx = 0;
    // The (message, block) pair of flat index `idx`, advanced without dividing.
    let (mut m0, mut b0) = (0usize, 0usize);
    while idx < total {
        let lanes = (total - idx).min(16);
        // Lane j: block b0 + j of message m0, carried into the next messages.
        let mut m = _mm512_set1_epi32(m0 as i32);
        let mut b = _mm512_add_epi32(_mm512_set1_epi32(b0 as i32), lane);
        loop {
            let wrap = _mm512_cmpge_epu32_mask(b, per_v);
            if wrap == 0 {
                break;
            }
            b = _mm512_mask_sub_epi32(b, wrap, b, per_v);
            m = _mm512_mask_add_epi32(m, wrap, m, one);
        }
        let ks = blocks16(
            kw,
            _mm512_add_epi32(b, one),
            n0,
            _mm512_permutexvar_epi32(m, lo),
            _mm512_permutexvar_epi32(m, hi),
        );
        for stream in ks.iter().take(lanes) {
            let off = b0 * 64;
            let rem = (len - off).min(64);
            // SAFETY: `off + rem <= len`, inside the buffer the caller vouched for.
            let p = unsafe { ptrs[m0].add(off) };
            if rem == 64 {
                // SAFETY: 64 bytes at `p` are valid and exclusively ours (above).
                unsafe {
                    let v = _mm512_loadu_si512(p.cast());
                    _mm512_storeu_si512(p.cast(), _mm512_xor_si512(v, *stream));
                }
            } else {
                let mask: __mmask64 = (1u64 << rem) - 1;
                // SAFETY: only the `rem` bytes selected by `mask` are read and written,
                // all inside the buffer; masked-off bytes are never accessed.
                unsafe {
                    let v = _mm512_maskz_loadu_epi8(mask, p.cast());
                    _mm512_mask_storeu_epi8(p.cast(), mask, _mm512_xor_si512(v, *stream));
                }
            }
            b0 += 1;
            if b0 == per {
                b0 = 0;
                m0 += 1;
            }
        }
        idx += lanes;
    }
}

/// `x * 20` per lane.
#[target_feature(enable = "avx512f")]
fn times20(x: __m512i) -> __m512i {
    _mm512_add_epi64(_mm512_slli_epi64::<4>(x), _mm512_slli_epi64::<2>(x))
}

/// Poly1305 state of eight lanes: `h` and the powers it multiplies by.
struct Poly {
    h: [__m512i; 3],
    /// `r` and `r^2` (mod 2^130 - 5, partly reduced), each with 20 times its upper
    /// two limbs (2^132 = 20 mod 2^130 - 5).
    r: Power,
    r2: Power,
}

/// A multiplier in radix 2^44: limbs `l`, and `20 * l[1]`, `20 * l[2]`.
#[derive(Clone, Copy)]
struct Power {
    l: [__m512i; 3],
    s1: __m512i,
    s2: __m512i,
}

impl Power {
    #[target_feature(enable = "avx512f")]
    fn new(l: [__m512i; 3]) -> Power {
        Power {
            s1: times20(l[1]),
            s2: times20(l[2]),
            l,
        }
    }
}

/// The six limb products of `a * p` before carrying: low and high 52-bit halves of
/// each output limb, each sum of three accumulated by the multiplies themselves (six
/// independent chains), added onto `acc`.
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_acc(acc: [__m512i; 6], a: [__m512i; 3], p: &Power) -> [__m512i; 6] {
    let [r0, r1, r2] = p.l;
    let (s1, s2) = (p.s1, p.s2);
    let lo = |z: __m512i, b: [__m512i; 3]| {
        let x = _mm512_madd52lo_epu64(z, a[0], b[0]);
        _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(x, a[1], b[1]), a[2], b[2])
    };
    let hi = |z: __m512i, b: [__m512i; 3]| {
        let x = _mm512_madd52hi_epu64(z, a[0], b[0]);
        _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(x, a[1], b[1]), a[2], b[2])
    };
    [
        lo(acc[0], [r0, s2, s1]),
        hi(acc[1], [r0, s2, s1]),
        lo(acc[2], [r1, r0, s2]),
        hi(acc[3], [r1, r0, s2]),
        lo(acc[4], [r2, r1, r0]),
        hi(acc[5], [r2, r1, r0]),
    ]
}

/// Carries the limb products of [`mul_acc`] into a partly reduced value (limbs of
/// 44, 44 and 42 bits, the middle one possibly a few bits over).
#[target_feature(enable = "avx512f")]
fn carry(d: [__m512i; 6]) -> [__m512i; 3] {
    let m44 = _mm512_set1_epi64(M44 as i64);
    let m42 = _mm512_set1_epi64(M42 as i64);
    let [d0l, d0h, d1l, d1h, d2l, d2h] = d;
    // A high half weighs 2^52: 2^8 into the next limb (2^10 past the 42-bit top).
    let d1l = _mm512_add_epi64(
        d1l,
        _mm512_add_epi64(_mm512_srli_epi64::<44>(d0l), _mm512_slli_epi64::<8>(d0h)),
    );
    let d2l = _mm512_add_epi64(
        d2l,
        _mm512_add_epi64(_mm512_srli_epi64::<44>(d1l), _mm512_slli_epi64::<8>(d1h)),
    );
    let c = _mm512_add_epi64(_mm512_srli_epi64::<42>(d2l), _mm512_slli_epi64::<10>(d2h));
    // 2^130 = 5.
    let h0 = _mm512_add_epi64(
        _mm512_and_si512(d0l, m44),
        _mm512_add_epi64(c, _mm512_slli_epi64::<2>(c)),
    );
    let h1 = _mm512_add_epi64(_mm512_and_si512(d1l, m44), _mm512_srli_epi64::<44>(h0));
    [_mm512_and_si512(h0, m44), h1, _mm512_and_si512(d2l, m42)]
}

/// One 16-byte block per lane (`lo`, `hi`: its two little-endian halves) as limbs,
/// with the 2^128 bit set.
#[target_feature(enable = "avx512f")]
fn limbs(lo: __m512i, hi: __m512i) -> [__m512i; 3] {
    let m44 = _mm512_set1_epi64(M44 as i64);
    [
        _mm512_and_si512(lo, m44),
        _mm512_and_si512(
            _mm512_or_si512(_mm512_srli_epi64::<44>(lo), _mm512_slli_epi64::<20>(hi)),
            m44,
        ),
        _mm512_or_si512(_mm512_srli_epi64::<24>(hi), _mm512_set1_epi64(1 << 40)),
    ]
}

#[target_feature(enable = "avx512f")]
fn add3(a: [__m512i; 3], b: [__m512i; 3]) -> [__m512i; 3] {
    [
        _mm512_add_epi64(a[0], b[0]),
        _mm512_add_epi64(a[1], b[1]),
        _mm512_add_epi64(a[2], b[2]),
    ]
}

impl Poly {
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn new(keys: &[[u8; 32]]) -> Poly {
        let mut r = [[0u64; 8]; 3];
        for (i, k) in keys.iter().enumerate().take(8) {
            let mut lo = [0u8; 16];
            lo.copy_from_slice(&k[..16]);
            let v = u128::from_le_bytes(lo) & CLAMP;
            r[0][i] = v as u64 & M44;
            r[1][i] = (v >> 44) as u64 & M44;
            r[2][i] = (v >> 88) as u64;
        }
        let r = Power::new([load_u64(&r[0]), load_u64(&r[1]), load_u64(&r[2])]);
        let z = _mm512_setzero_si512();
        let r2 = Power::new(carry(mul_acc([z; 6], r.l, &r)));
        Poly { h: [z; 3], r, r2 }
    }

    /// Absorbs one 16-byte block per lane (`lo`, `hi`: its two little-endian halves),
    /// with the 2^128 bit set: `h = (h + m) * r`.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn block(&mut self, lo: __m512i, hi: __m512i) {
        let z = _mm512_setzero_si512();
        let h = add3(self.h, limbs(lo, hi));
        self.h = carry(mul_acc([z; 6], h, &self.r));
    }

    /// Absorbs two consecutive blocks per lane with one carry:
    /// `h = (h + m1) * r^2 + m2 * r`, the same as two [`Poly::block`] steps.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn block2(&mut self, lo1: __m512i, hi1: __m512i, lo2: __m512i, hi2: __m512i) {
        let z = _mm512_setzero_si512();
        let h = add3(self.h, limbs(lo1, hi1));
        let d = mul_acc([z; 6], limbs(lo2, hi2), &self.r);
        self.h = carry(mul_acc(d, h, &self.r2));
    }

    /// The tags: `h` reduced mod 2^130 - 5, plus `s`, mod 2^128.
    #[target_feature(enable = "avx512f")]
    fn finish(&self, keys: &[[u8; 32]]) -> [[u8; 16]; 8] {
        let [h0, h1, h2] = [
            store_u64(self.h[0]),
            store_u64(self.h[1]),
            store_u64(self.h[2]),
        ];
        let mut tags = [[0u8; 16]; 8];
        for (i, k) in keys.iter().enumerate().take(8) {
            let (mut a, mut b, mut c) = (h0[i], h1[i], h2[i]);
            b += a >> 44;
            a &= M44;
            c += b >> 44;
            b &= M44;
            a += (c >> 42) * 5;
            c &= M42;
            b += a >> 44;
            a &= M44;
            c += b >> 44;
            b &= M44;
            // h + 5 - 2^130, kept when it does not go negative (h >= p).
            let mut g0 = a + 5;
            let mut g1 = b + (g0 >> 44);
            g0 &= M44;
            let g2 = c + (g1 >> 44);
            g1 &= M44;
            let keep = 0u64.wrapping_sub(g2 >> 42);
            let a = (a & !keep) | (g0 & keep);
            let b = (b & !keep) | (g1 & keep);
            let c = (c & !keep) | (g2 & M42 & keep);
            let h = u128::from(a) | u128::from(b) << 44 | u128::from(c) << 88;
            let mut s = [0u8; 16];
            s.copy_from_slice(&k[16..]);
            tags[i] = h.wrapping_add(u128::from_le_bytes(s)).to_le_bytes();
        }
        tags
    }
}

/// Eight messages' Poly1305 lanes and where their next block is.
struct Lanes {
    poly: Poly,
    /// Each lane's message; lanes past the messages repeat message 0 (read, never
    /// used: their tags are not taken).
    ptrs: [*const u8; 8],
    /// Bytes absorbed so far (the same in every lane).
    at: usize,
}

impl Lanes {
    /// Lanes for `msgs` (at most eight) with their one-time keys.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn new(keys: &[[u8; 32]], msgs: &[Message<'_>]) -> Lanes {
        let n = msgs.len().min(8);
        let mut ptrs = [msgs[0].buf.as_ptr(); 8];
        for (p, m) in ptrs.iter_mut().zip(&msgs[..n]) {
            *p = m.buf.as_ptr();
        }
        Lanes {
            poly: Poly::new(&keys[..n]),
            ptrs,
            at: 0,
        }
    }

    /// The next `blocks` (1 to 4) full 16-byte blocks of every lane, as (low, high)
    /// halves with one message per 64-bit lane: 64 bytes loaded per message and an
    /// 8x8 transpose of 64-bit words (loads and shuffles instead of gathers, which cost
    /// half of Poly1305's time).
    ///
    /// # Safety
    /// Every lane's message must have `16 * blocks` readable bytes at the offset
    /// reached, and still be borrowed.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load(&self, blocks: usize) -> [__m512i; 8] {
        let mask: __mmask64 = if blocks >= 4 {
            !0
        } else {
            (1u64 << (16 * blocks)) - 1
        };
        // SAFETY: lane i reads the bytes selected by `mask` (16 * blocks of them) at
        // offset `at` of message i, which the caller vouches for; masked-off bytes are
        // not accessed.
        let v: [__m512i; 8] = std::array::from_fn(|i| unsafe {
            _mm512_maskz_loadu_epi8(mask, self.ptrs[i].add(self.at).cast())
        });
        // Pairs of messages: 128-bit chunk c of t_lo[p] is the low half of block c of
        // messages 2p and 2p+1, t_hi[p] the high half.
        let t_lo: [__m512i; 4] =
            std::array::from_fn(|p| _mm512_unpacklo_epi64(v[2 * p], v[2 * p + 1]));
        let t_hi: [__m512i; 4] =
            std::array::from_fn(|p| _mm512_unpackhi_epi64(v[2 * p], v[2 * p + 1]));
        // A 4x4 transpose of 128-bit chunks: chunk p of out[c] = chunk c of t[p].
        let chunks = |t: [__m512i; 4]| {
            let u0 = _mm512_shuffle_i64x2::<0b10_00_10_00>(t[0], t[1]);
            let u1 = _mm512_shuffle_i64x2::<0b11_01_11_01>(t[0], t[1]);
            let u2 = _mm512_shuffle_i64x2::<0b10_00_10_00>(t[2], t[3]);
            let u3 = _mm512_shuffle_i64x2::<0b11_01_11_01>(t[2], t[3]);
            [
                _mm512_shuffle_i64x2::<0b10_00_10_00>(u0, u2),
                _mm512_shuffle_i64x2::<0b10_00_10_00>(u1, u3),
                _mm512_shuffle_i64x2::<0b11_01_11_01>(u0, u2),
                _mm512_shuffle_i64x2::<0b11_01_11_01>(u1, u3),
            ]
        };
        let lo = chunks(t_lo);
        let hi = chunks(t_hi);
        [lo[0], hi[0], lo[1], hi[1], lo[2], hi[2], lo[3], hi[3]]
    }

    /// The last, partial block (`len % 16` bytes, zero-padded), then the lengths block.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn finish(mut self, keys: &[[u8; 32]], msgs: &[Message<'_>], len: usize) -> [[u8; 16]; 8] {
        let (full, rem) = (len / 16, len % 16);
        if rem != 0 {
            let mut lo = [0u64; 8];
            let mut hi = [0u64; 8];
            for (i, m) in msgs.iter().enumerate().take(8) {
                let mut b = [0u8; 16];
                b[..rem].copy_from_slice(&m.buf[full * 16..len]);
                let v = u128::from_le_bytes(b);
                lo[i] = v as u64;
                hi[i] = (v >> 64) as u64;
            }
            self.poly.block(load_u64(&lo), load_u64(&hi));
        }
        self.poly
            .block(_mm512_setzero_si512(), _mm512_set1_epi64(len as i64));
        self.poly.finish(keys)
    }
}

/// Poly1305 of each message's first `len` bytes, zero-padded to 16, then the lengths
/// block (AAD 0, ciphertext `len`): RFC 8439's AEAD construction with an empty AAD.
/// Messages 0..8 and 8..16 are two independent sets of lanes, absorbed in turn so that
/// the multiply chains of one overlap the other's.
#[target_feature(enable = "avx512f,avx512bw,avx512ifma")]
fn poly1305(keys: &[[u8; 32]], msgs: &[Message<'_>], len: usize) -> [[u8; 16]; GROUP] {
    let n = msgs.len().min(GROUP);
    let (first, second) = msgs[..n].split_at(n.min(8));
    let mut a = Lanes::new(&keys[..first.len()], first);
    let mut b = (!second.is_empty()).then(|| Lanes::new(&keys[8..n], second));
    let full = len / 16;
    let mut done = 0;
    while done < full {
        let blocks = (full - done).min(4);
        // SAFETY: `done + blocks <= len / 16` blocks absorbed after this, so the bytes
        // read lie in each message's first `len`; `msgs` is borrowed for the whole call.
        let (la, lb) = unsafe { (a.load(blocks), b.as_ref().map(|b| b.load(blocks))) };
        // Two blocks at a time, alternating between the sets; an odd last one alone.
        let mut k = 0;
        while k + 2 <= blocks {
            a.poly
                .block2(la[2 * k], la[2 * k + 1], la[2 * k + 2], la[2 * k + 3]);
            if let (Some(b), Some(lb)) = (b.as_mut(), lb.as_ref()) {
                b.poly
                    .block2(lb[2 * k], lb[2 * k + 1], lb[2 * k + 2], lb[2 * k + 3]);
            }
            k += 2;
        }
        if k < blocks {
            a.poly.block(la[2 * k], la[2 * k + 1]);
            if let (Some(b), Some(lb)) = (b.as_mut(), lb.as_ref()) {
                b.poly.block(lb[2 * k], lb[2 * k + 1]);
            }
        }
        a.at += 16 * blocks;
        if let Some(b) = b.as_mut() {
            b.at += 16 * blocks;
        }
        done += blocks;
    }
    let mut tags = [[0u8; 16]; GROUP];
    tags[..8].copy_from_slice(&a.finish(&keys[..first.len()], first, len));
    if let Some(b) = b {
        tags[8..].copy_from_slice(&b.finish(&keys[8..n], second, len));
    }
    tags
}
