//! The anti-replay window of a receiving session, as in the Linux kernel
//! (`drivers/net/wireguard/receive.c`, `counter_validate`).
//!
//! A data message's counter is checked twice: [`ReplayWindow::would_accept`]
//! before decryption (cheap, no mutation, so forged packets cannot move the
//! window), then [`ReplayWindow::accept`] after the AEAD tag verified, which
//! records the counter. The window is a ring of [`REPLAY_WINDOW_BITS`] bits
//! in `u64` words; one word is always being recycled, so
//! [`WINDOW_SIZE`] = 8192 − 64 counters behind the highest one are tracked.

use std::fmt;

use crate::constants::{REJECT_AFTER_MESSAGES, REPLAY_WINDOW_BITS};

const BITS_PER_WORD: u64 = u64::BITS as u64;
const WORDS: usize = (REPLAY_WINDOW_BITS / BITS_PER_WORD) as usize;
const WORD_MASK: u64 = WORDS as u64 - 1;

/// How far behind the highest accepted counter a counter may still be
/// accepted (the kernel's `COUNTER_WINDOW_SIZE`).
pub const WINDOW_SIZE: u64 = REPLAY_WINDOW_BITS - BITS_PER_WORD;

const _: () = assert!(WORDS.is_power_of_two());

/// Sliding bitmap of the counters received on one session.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest accepted counter plus one; 0 before the first message.
    next: u64,
    /// Ring of seen-bits, indexed by `(counter + 1) / 64 mod WORDS`.
    bitmap: [u64; WORDS],
}

impl ReplayWindow {
    /// An empty window: every counter below `REJECT_AFTER_MESSAGES` is new.
    pub fn new() -> Self {
        Self {
            next: 0,
            bitmap: [0; WORDS],
        }
    }

    /// Whether `accept(counter)` would return true now. Call before decrypting.
    pub fn would_accept(&self, counter: u64) -> bool {
        let Some(shifted) = Self::admissible(self.next, counter) else {
            return false;
        };
        if shifted > self.next {
            // Words ahead of `next` are zeroed as the window moves into them.
            return true;
        }
        let (word, bit) = Self::position(shifted);
        self.bitmap[word] & bit == 0
    }

    /// Records `counter` if it is new and inside the window; returns false for
    /// a replay, a counter too old for the window, or a counter at or beyond
    /// `REJECT_AFTER_MESSAGES`. Call only after the packet authenticated.
    pub fn accept(&mut self, counter: u64) -> bool {
        let Some(shifted) = Self::admissible(self.next, counter) else {
            return false;
        };
        if shifted > self.next {
            self.advance(shifted);
        }
        let (word, bit) = Self::position(shifted);
        let fresh = self.bitmap[word] & bit == 0;
        self.bitmap[word] |= bit;
        fresh
    }

    /// The highest counter accepted so far, if any.
    pub fn highest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    /// `counter + 1` if it is below the reject limit and not behind the window.
    fn admissible(next: u64, counter: u64) -> Option<u64> {
        if counter >= REJECT_AFTER_MESSAGES {
            return None;
        }
        let shifted = counter + 1;
        (shifted.saturating_add(WINDOW_SIZE) >= next).then_some(shifted)
    }

    /// Moves the top of the window to `shifted`, zeroing the words entered.
    fn advance(&mut self, shifted: u64) {
        let index = shifted / BITS_PER_WORD;
        let current = self.next / BITS_PER_WORD;
        let top = (index - current).min(WORDS as u64);
        for i in 1..=top {
            self.bitmap[((current + i) & WORD_MASK) as usize] = 0;
        }
        self.next = shifted;
    }

    fn position(shifted: u64) -> (usize, u64) {
        let word = ((shifted / BITS_PER_WORD) & WORD_MASK) as usize;
        (word, 1 << (shifted % BITS_PER_WORD))
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the kernel's `T(n, v)`: the pre-check must agree with the result.
    struct Harness {
        window: ReplayWindow,
        test_num: u32,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                window: ReplayWindow::new(),
                test_num: 0,
            }
        }

        fn init(&mut self) {
            self.window = ReplayWindow::new();
        }

        #[track_caller]
        fn t(&mut self, n: u64, expected: bool) {
            self.test_num += 1;
            let pre = self.window.would_accept(n);
            let got = self.window.accept(n);
            assert_eq!(
                got, expected,
                "counter self-test {} (n = {n})",
                self.test_num
            );
            assert_eq!(pre, got, "would_accept disagrees, test {}", self.test_num);
        }
    }

    /// `drivers/net/wireguard/selftest/counter.c`, case for case.
    #[test]
    fn kernel_counter_selftest() {
        const T_LIM: u64 = WINDOW_SIZE + 1;
        const RAM: u64 = REJECT_AFTER_MESSAGES;
        let mut h = Harness::new();
        let cases: &[(u64, bool)] = &[
            (0, true),
            (1, true),
            (1, false),
            (9, true),
            (8, true),
            (7, true),
            (7, false),
            (T_LIM, true),
            (T_LIM - 1, true),
            (T_LIM - 1, false),
            (T_LIM - 2, true),
            (2, true),
            (2, false),
            (T_LIM + 16, true),
            (3, false),
            (T_LIM + 16, false),
            (T_LIM * 4, true),
            (T_LIM * 4 - (T_LIM - 1), true),
            (10, false),
            (T_LIM * 4 - T_LIM, false),
            (T_LIM * 4 - (T_LIM + 1), false),
            (T_LIM * 4 - (T_LIM - 2), true),
            (T_LIM * 4 + 1 - T_LIM, false),
            (0, false),
            (RAM, false),
            (RAM - 1, true),
            (RAM, false),
            (RAM - 1, false),
            (RAM - 2, true),
            (RAM + 1, false),
            (RAM + 2, false),
            (RAM - 2, false),
            (RAM - 3, true),
            (0, false),
        ];
        for &(n, v) in cases {
            h.t(n, v);
        }
        assert_eq!(h.test_num, 34);

        h.init();
        for i in 1..=WINDOW_SIZE {
            h.t(i, true);
        }
        h.t(0, true);
        h.t(0, false);

        h.init();
        for i in 2..=WINDOW_SIZE + 1 {
            h.t(i, true);
        }
        h.t(1, true);
        h.t(0, false);

        h.init();
        for i in (0..=WINDOW_SIZE).rev() {
            h.t(i, true);
        }

        h.init();
        for i in (1..=WINDOW_SIZE + 1).rev() {
            h.t(i, true);
        }
        h.t(0, false);

        h.init();
        for i in (1..=WINDOW_SIZE).rev() {
            h.t(i, true);
        }
        h.t(WINDOW_SIZE + 1, true);
        h.t(0, false);

        h.init();
        for i in (1..=WINDOW_SIZE).rev() {
            h.t(i, true);
        }
        h.t(0, true);
        h.t(WINDOW_SIZE + 1, true);
    }

    #[test]
    fn window_size_matches_kernel() {
        assert_eq!(WINDOW_SIZE, 8192 - 64);
    }

    #[test]
    fn would_accept_does_not_mutate() {
        let mut w = ReplayWindow::new();
        assert!(w.would_accept(100_000));
        assert!(w.accept(5));
        assert!(w.would_accept(100_000));
        assert_eq!(w.highest(), Some(5));
        assert!(!w.would_accept(5));
    }

    #[test]
    fn big_jump_clears_whole_ring() {
        let mut w = ReplayWindow::new();
        for i in 0..WINDOW_SIZE {
            assert!(w.accept(i));
        }
        // Jump by exactly the ring size: stale bits in the same slots must be gone.
        let far = REPLAY_WINDOW_BITS * 3;
        assert!(w.accept(far));
        for i in (far - WINDOW_SIZE)..far {
            assert!(w.would_accept(i), "{i}");
        }
        assert!(!w.would_accept(far - WINDOW_SIZE - 2));
    }

    /// Brute-force reference: the set of accepted counters plus the maximum.
    #[test]
    fn matches_reference_model() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next_rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::HashSet::new();
        let mut top: Option<u64> = None;
        for _ in 0..200_000 {
            let r = next_rand();
            let base = top.unwrap_or(0);
            let n = match r % 4 {
                0 => base + r % 200,
                1 => base.saturating_sub((r >> 8) % (WINDOW_SIZE + 300)),
                2 => base + (r >> 8) % 20_000,
                _ => base.saturating_sub(r % 70),
            };
            let too_old = top.is_some_and(|t| n + 1 + WINDOW_SIZE < t + 1);
            let expected = !too_old && !seen.contains(&n);
            assert_eq!(w.would_accept(n), expected, "pre-check of {n}");
            assert_eq!(w.accept(n), expected, "{n}, top {top:?}");
            if expected {
                seen.insert(n);
                top = Some(top.map_or(n, |t| t.max(n)));
            }
        }
    }
}
