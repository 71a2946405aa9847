//! Unit tests of I/O code (TUN, UDP, netlink) in a fresh, throwaway network namespace:
//! everything the body creates there disappears with the namespace when its thread
//! ends, even when it panics. Root only.

use std::process::{Command, Output};

/// Runs `body` on a new thread that has unshared its network namespace (loopback up);
/// a panic in `body` is propagated. Child processes (`ip`) spawned from the body
/// inherit the thread's namespace.
pub fn in_fresh_netns<F: FnOnce() + Send + 'static>(body: F) {
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            ret,
            0,
            "unshare(CLONE_NEWNET) failed (tests need root): {}",
            std::io::Error::last_os_error()
        );
        ip(&["link", "set", "lo", "up"]);
        body();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `ip ARGS...` and panics with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = ip_output(args);
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip ARGS...` (with `LC_ALL=C`) and returns what it printed.
pub fn ip_output(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"))
}
