//! Where io_uring is unavailable the dataplane falls back to the `poll(2)` loop with
//! `recvmmsg` on its own, and carries traffic: proven with io_uring switched off for
//! the whole machine (`kernel.io_uring_disabled=2`) while two daemons start.
//!
//! The sysctl is global, so this file holds a single test (cargo runs test binaries
//! one after another, so no other test's daemon starts meanwhile) and restores the
//! old value as soon as the daemons run, and on every exit path (a drop guard).

use portdistrict_netns_tests::{assert_ping, tcp_transfer, Family, Pair, PairOptions};

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// Puts the sysctl back when dropped (also when the test panics).
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(SYSCTL, &self.0) {
            eprintln!("restoring {SYSCTL} to {}: {e}", self.0.trim());
        }
    }
}

#[test]
fn falls_back_to_poll_when_io_uring_is_disabled() {
    let Ok(old) = std::fs::read_to_string(SYSCTL) else {
        // Kernels before 6.6 have no switch; nothing to prove there.
        eprintln!("{SYSCTL} missing: skipped");
        return;
    };
    std::env::remove_var("PD_IO");
    let restore = Restore(old);
    std::fs::write(SYSCTL, "2").expect("disabling io_uring");
    // `Pair::new` configures both daemons through their UAPI sockets, which their
    // loops serve: when it returns, each has already chosen its receive path.
    let pair = Pair::new(&PairOptions::default());
    drop(restore);
    for side in [&pair.left, &pair.right] {
        let s = side.daemon.stats();
        assert_eq!(s["io_uring"], 0, "fell back: {s:?}");
    }
    for family in Family::ALL {
        assert_ping(&pair.left.ns, pair.right.tunnel_addr(family), 3);
    }
    tcp_transfer(
        &pair.left.ns,
        &pair.right.ns,
        pair.right.tunnel_addr(Family::V4),
        5111,
        10,
        21,
    );
    // And with io_uring back, a new daemon uses it again (the same binary, same test).
    let again = Pair::new(&PairOptions::default());
    assert_eq!(again.left.daemon.stats()["io_uring"], 1);
    assert_ping(&again.left.ns, again.right.tunnel_addr(Family::V4), 2);
}
