//! Rate limits for negotiation datagrams: a token bucket per source address and one
//! for all sources. Bounded state: at most [`Limits::max_sources`] sources are
//! tracked; when the table is full, sources whose bucket has refilled are forgotten
//! (they are as good as new), and if none has, a new source is refused until one has.
//! Pure: the time is an argument.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Datagrams one source may send at once.
    pub source_burst: u32,
    /// Datagrams per second one source may send in the long run.
    pub source_per_sec: u32,
    /// Datagrams all sources together may send at once.
    pub global_burst: u32,
    /// Datagrams per second all sources together may send in the long run.
    pub global_per_sec: u32,
    /// Sources tracked at most.
    pub max_sources: usize,
}

impl Limits {
    /// What `exit serve` uses: a consumer retransmits its request every half second,
    /// and asks once more from its inner address.
    pub const NEGOTIATION: Limits = Limits {
        source_burst: 10,
        source_per_sec: 2,
        global_burst: 100,
        global_per_sec: 50,
        max_sources: 4096,
    };

    /// What `exit serve` uses for exit channel connections (TCP): each costs the
    /// provider four X25519 operations, so a source gets a burst (a NAT'd office
    /// asking at once) and then a few a second.
    pub const CHANNEL: Limits = Limits {
        source_burst: 100,
        source_per_sec: 10,
        global_burst: 400,
        global_per_sec: 200,
        max_sources: 4096,
    };
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens in millitokens (1000 = one datagram).
    milli: u64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            milli: u64::from(burst) * 1000,
            at: now,
        }
    }

    fn refill(&mut self, burst: u32, per_sec: u32, now: Instant) {
        let ms =
            u64::try_from(now.saturating_duration_since(self.at).as_millis()).unwrap_or(u64::MAX);
        self.milli = self
            .milli
            .saturating_add(ms.saturating_mul(u64::from(per_sec)))
            .min(u64::from(burst) * 1000);
        self.at = now;
    }

    fn is_full(&self, burst: u32) -> bool {
        self.milli >= u64::from(burst) * 1000
    }
}

/// Per-source and global token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    limits: Limits,
    sources: HashMap<IpAddr, Bucket>,
    global: Bucket,
}

impl RateLimiter {
    /// A limiter with full buckets at `now`.
    pub fn new(limits: Limits, now: Instant) -> RateLimiter {
        RateLimiter {
            limits,
            sources: HashMap::new(),
            global: Bucket::full(limits.global_burst, now),
        }
    }

    /// Whether a datagram from `source` at `now` may be answered (and counts it).
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let l = self.limits;
        if !self.sources.contains_key(&source) && self.sources.len() >= l.max_sources {
            self.sources.retain(|_, b| {
                b.refill(l.source_burst, l.source_per_sec, now);
                !b.is_full(l.source_burst)
            });
            if self.sources.len() >= l.max_sources {
                return false;
            }
        }
        let b = self
            .sources
            .entry(source)
            .or_insert_with(|| Bucket::full(l.source_burst, now));
        b.refill(l.source_burst, l.source_per_sec, now);
        if b.milli < 1000 {
            return false;
        }
        self.global.refill(l.global_burst, l.global_per_sec, now);
        if self.global.milli < 1000 {
            return false;
        }
        b.milli -= 1000;
        self.global.milli -= 1000;
        true
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const L: Limits = Limits {
        source_burst: 3,
        source_per_sec: 2,
        global_burst: 5,
        global_per_sec: 10,
        max_sources: 4,
    };

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([100, 127, 0, n])
    }

    #[test]
    fn a_flooding_source_is_held_to_its_rate_and_others_still_pass() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(L, t0);
        let passed = (0..100).filter(|_| r.allow(ip(1), t0)).count();
        assert_eq!(passed, 3, "the burst");
        assert!(r.allow(ip(2), t0), "another source still passes");
        // Half a second later: one more for the flooder (2 per second).
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..100).filter(|_| r.allow(ip(1), t1)).count(), 1);
    }

    #[test]
    fn the_global_bucket_caps_all_sources_together() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(L, t0);
        let passed = (1..=4)
            .flat_map(|s| std::iter::repeat_n(s, 3))
            .filter(|&s| r.allow(ip(s), t0))
            .count();
        assert_eq!(passed, 5);
        let t1 = t0 + Duration::from_millis(100);
        assert!(r.allow(ip(4), t1), "refilled at 10 per second");
    }

    #[test]
    fn state_is_bounded_and_idle_sources_are_forgotten() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(
            Limits {
                global_burst: 1000,
                ..L
            },
            t0,
        );
        for s in 1..=4 {
            assert!(r.allow(ip(s), t0));
        }
        assert!(!r.allow(ip(5), t0), "table full of active sources");
        assert_eq!(r.tracked(), 4);
        let later = t0 + Duration::from_secs(2);
        assert!(r.allow(ip(5), later), "refilled sources make room");
        assert!(r.tracked() <= 4);
    }
}
