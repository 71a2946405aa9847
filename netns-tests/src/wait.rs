//! Bounded polling.

use std::time::{Duration, Instant};

/// Polls `cond` every `poll` until it returns true or `timeout` has passed; returns
/// whether it became true. `cond` is always evaluated at least once, and once more at
/// the deadline, so a condition that turns true during the last sleep is not missed.
pub fn wait_until(timeout: Duration, poll: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_immediately() {
        assert!(wait_until(Duration::ZERO, Duration::from_millis(1), || {
            true
        }));
    }

    #[test]
    fn gives_up_after_timeout() {
        let start = Instant::now();
        let mut calls = 0;
        let ok = wait_until(Duration::from_millis(50), Duration::from_millis(10), || {
            calls += 1;
            false
        });
        assert!(!ok);
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(calls >= 3, "polled {calls} times");
    }

    #[test]
    fn becomes_true_later() {
        let mut n = 0;
        assert!(wait_until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                n == 5
            }
        ));
        assert_eq!(n, 5);
    }
}
