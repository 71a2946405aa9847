//! The link monitor with a real TUN moved to another network namespace (root only);
//! the monitor's own tests are in `portdistrict-netlink`.

use super::*;
use crate::io::poll::{poll_fds, PollFd};
use crate::io::testutil::{in_fresh_netns, ip};
use std::io;
use std::time::{Duration, Instant};

/// Drains `monitor` until `want` shows up; panics with what was seen after 5 s.
fn wait_for(monitor: &mut LinkMonitor, want: LinkEvent) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let mut set = [PollFd::readable(monitor.fd())];
        poll_fds(&mut set, Some(Duration::from_millis(100))).unwrap();
        let start = seen.len();
        monitor.drain(&mut seen).unwrap();
        if seen[start..].contains(&want) {
            return;
        }
    }
    panic!("no {want:?} within 5 s; saw {seen:?}");
}

#[test]
fn moving_the_tun_away_is_deleted_but_the_fd_keeps_working() {
    in_fresh_netns(|| {
        let tun = crate::io::Tun::create("pdmove0").unwrap();
        let mut monitor = LinkMonitor::new(tun.ifindex()).unwrap();
        wait_for(&mut monitor, LinkEvent::Mtu(1500));
        // A second namespace, held by a parked thread; `ip ... netns TID` targets it.
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            // SAFETY: unshare and gettid take no pointers; CLONE_NEWNET moves only this thread.
            let (ret, tid) = unsafe { (libc::unshare(libc::CLONE_NEWNET), libc::gettid()) };
            assert_eq!(ret, 0);
            tid_tx.send(tid).unwrap();
            let _ = done_rx.recv();
        });
        let tid = tid_rx.recv().unwrap().to_string();
        ip(&["link", "set", "pdmove0", "netns", &tid]);
        wait_for(&mut monitor, LinkEvent::Deleted);
        let err = tun.read(&mut [0u8; 1500]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err:?}");
        assert!(!crate::io::Tun::is_gone(&err));
        assert!(
            tun.mtu().is_err(),
            "the name is not in this namespace any more"
        );
        done_tx.send(()).unwrap();
        other.join().unwrap();
    });
}
