//! Per-source rate limiting of handshake messages, with the semantics of the
//! kernel's `drivers/net/wireguard/ratelimiter.c`.
//!
//! When the device is under load, every handshake message that carries a
//! valid cookie MAC2 is passed through [`RateLimiter::allow`] keyed by its
//! source address before any expensive Diffie-Hellman work. Each source
//! (an IPv4 address, or an IPv6 /64) has a token bucket counted in
//! nanoseconds: a packet costs `1 s / RATELIMIT_PACKETS_PER_SECOND`, the bucket
//! holds at most `RATELIMIT_PACKETS_BURST` packets' worth. The driver calls
//! [`RateLimiter::gc`] about once a second (see [`RateLimiter::poll_gc`]) to
//! forget sources idle for more than a second.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::constants::{RATELIMIT_PACKETS_BURST, RATELIMIT_PACKETS_PER_SECOND};

const NSEC_PER_SEC: u64 = 1_000_000_000;
/// Tokens (nanoseconds) one packet costs.
const PACKET_COST: u64 = NSEC_PER_SEC / RATELIMIT_PACKETS_PER_SECOND;
/// Bucket capacity in tokens.
const TOKEN_MAX: u64 = PACKET_COST * RATELIMIT_PACKETS_BURST;
/// Entries idle for longer than this are dropped by `gc`.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Default bound on the number of tracked sources.
pub const DEFAULT_MAX_ENTRIES: usize = 16384;

/// A rate-limited source: a full IPv4 address or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4([u8; 4]),
    V6(u64),
}

impl Source {
    fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(a) => Self::V4(a.octets()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => Self::V6((a.to_bits() >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    last: Instant,
    tokens: u64,
}

/// Token buckets for up to `max_entries` sources.
///
/// The map uses std's randomly keyed SipHash, so remote peers cannot choose
/// addresses that collide.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    buckets: HashMap<Source, Bucket>,
    max_entries: usize,
    next_gc: Option<Instant>,
}

impl RateLimiter {
    /// A limiter tracking at most [`DEFAULT_MAX_ENTRIES`] sources.
    pub fn new() -> Self {
        Self::with_max_entries(DEFAULT_MAX_ENTRIES)
    }

    /// A limiter tracking at most `max_entries` sources; when the table is
    /// full, packets from sources not yet tracked are refused.
    pub fn with_max_entries(max_entries: usize) -> Self {
        Self {
            buckets: HashMap::new(),
            max_entries,
            next_gc: None,
        }
    }

    /// Takes one packet's worth of tokens from `src`'s bucket; false if the
    /// bucket is empty or `src` is new and the table is full.
    pub fn allow(&mut self, now: Instant, src: IpAddr) -> bool {
        let key = Source::of(src);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            return bucket.take(now);
        }
        if self.buckets.len() >= self.max_entries && !self.gc_if_due(now) {
            return false;
        }
        let bucket = Bucket {
            last: now,
            tokens: TOKEN_MAX - PACKET_COST,
        };
        self.buckets.insert(key, bucket);
        self.next_gc.get_or_insert(now + IDLE_TIMEOUT);
        true
    }

    /// Forgets sources that sent nothing for more than a second.
    pub fn gc(&mut self, now: Instant) {
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) <= IDLE_TIMEOUT);
        self.next_gc = (!self.buckets.is_empty()).then(|| now + IDLE_TIMEOUT);
    }

    /// When the driver should next call [`RateLimiter::gc`]: a second after
    /// the last collection (or after the first source arrived), `None` while
    /// nothing is tracked.
    pub fn poll_gc(&self) -> Option<Instant> {
        self.next_gc
    }

    /// Number of tracked sources.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// With a full table, collects idle entries at most once a second (so a
    /// flood of new sources costs O(table) per second, not per packet).
    /// Returns whether room was made.
    fn gc_if_due(&mut self, now: Instant) -> bool {
        if self.next_gc.is_none_or(|due| now >= due) {
            self.gc(now);
        }
        self.buckets.len() < self.max_entries
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
        let tokens = self.tokens.saturating_add(elapsed).min(TOKEN_MAX);
        self.last = self.last.max(now);
        let allowed = tokens >= PACKET_COST;
        self.tokens = if allowed {
            tokens - PACKET_COST
        } else {
            tokens
        };
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// The one clock read of these tests: an arbitrary base that every
    /// simulated time is an offset from.
    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    const MS: Duration = Duration::from_millis(1);

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    /// The kernel's `expected_results` table of `selftest/ratelimiter.c`.
    #[test]
    fn kernel_selftest_sequence() {
        let burst = RATELIMIT_PACKETS_BURST as usize;
        let step = Duration::from_nanos(PACKET_COST);
        let mut expected = vec![(true, Duration::ZERO); burst];
        expected.extend([
            (false, Duration::ZERO),
            (true, step),
            (false, Duration::ZERO),
            (true, step * 2),
            (true, Duration::ZERO),
            (false, Duration::ZERO),
        ]);
        let v6 = IpAddr::V6("2001:db8:1:2::1".parse().unwrap());
        for src in [v4(1), v6] {
            let mut rl = RateLimiter::new();
            let mut now = base();
            for (i, &(result, sleep)) in expected.iter().enumerate() {
                now += sleep;
                assert_eq!(rl.allow(now, src), result, "{src} step {i}");
            }
        }
    }

    #[test]
    fn burst_then_steady_rate() {
        let mut rl = RateLimiter::new();
        let t0 = base();
        let allowed = (0..100).filter(|_| rl.allow(t0, v4(1))).count();
        assert_eq!(allowed, 5);
        // Over the next 10 s at 1000 packets/s, exactly 20/s get through.
        let allowed = (1..=10_000)
            .filter(|i| rl.allow(t0 + MS * *i, v4(1)))
            .count();
        assert_eq!(allowed, 200);
    }

    #[test]
    fn flooding_source_does_not_limit_another() {
        let mut rl = RateLimiter::new();
        let t0 = base();
        for i in 0..1000 {
            rl.allow(t0 + MS * (i / 10), v4(66));
        }
        assert!(!rl.allow(t0 + MS * 99, v4(66)), "the flooder is limited");
        for _ in 0..5 {
            assert!(rl.allow(t0 + MS * 100, v4(7)));
        }
        assert!(!rl.allow(t0 + MS * 100, v4(7)));
    }

    #[test]
    fn ipv6_keyed_by_slash_64() {
        let mut rl = RateLimiter::new();
        let t0 = base();
        let a: Ipv6Addr = "2001:db8:aa:bb::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:aa:bb:ffff:1:2:3".parse().unwrap();
        let other: Ipv6Addr = "2001:db8:aa:bc::1".parse().unwrap();
        for i in 0..5 {
            let src = if i % 2 == 0 { a } else { b };
            assert!(rl.allow(t0, IpAddr::V6(src)));
        }
        assert!(!rl.allow(t0, IpAddr::V6(b)));
        assert!(rl.allow(t0, IpAddr::V6(other)));
        assert_eq!(rl.len(), 2);
    }

    #[test]
    fn v4_mapped_v6_shares_the_v4_bucket() {
        let mut rl = RateLimiter::new();
        let t0 = base();
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped());
        for _ in 0..5 {
            assert!(rl.allow(t0, mapped));
        }
        assert!(!rl.allow(t0, v4(9)));
    }

    #[test]
    fn gc_drops_idle_entries() {
        let mut rl = RateLimiter::new();
        let t0 = base();
        rl.allow(t0, v4(1));
        rl.allow(t0 + MS * 500, v4(2));
        assert_eq!(rl.len(), 2);
        assert_eq!(rl.poll_gc(), Some(t0 + MS * 1000));
        rl.gc(t0 + MS * 1000);
        assert_eq!(rl.len(), 2, "exactly 1 s idle is kept");
        assert_eq!(rl.poll_gc(), Some(t0 + MS * 2000));
        rl.gc(t0 + MS * 1001);
        assert_eq!(rl.len(), 1);
        rl.gc(t0 + MS * 1501);
        assert!(rl.is_empty());
        assert_eq!(rl.poll_gc(), None);
    }

    #[test]
    fn full_table_refuses_new_sources_only() {
        let mut rl = RateLimiter::with_max_entries(3);
        let t0 = base();
        for i in 1..=3 {
            assert!(rl.allow(t0, v4(i)));
        }
        rl.gc(t0);
        assert!(!rl.allow(t0, v4(4)), "table full");
        assert!(rl.allow(t0, v4(1)), "known sources still served");
        assert_eq!(rl.len(), 3);
        // Once the others are idle, a full table collects and makes room.
        let later = t0 + Duration::from_secs(2);
        assert!(rl.allow(later, v4(4)));
        assert_eq!(rl.len(), 1);
    }

    #[test]
    fn time_going_backwards_grants_nothing() {
        let mut rl = RateLimiter::new();
        let t0 = base() + Duration::from_secs(10);
        for _ in 0..5 {
            assert!(rl.allow(t0, v4(1)));
        }
        assert!(!rl.allow(t0 - Duration::from_secs(5), v4(1)));
        assert!(!rl.allow(t0, v4(1)));
        assert!(rl.allow(t0 + MS * 50, v4(1)));
    }
}
