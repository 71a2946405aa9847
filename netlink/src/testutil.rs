//! Helpers of the root-only tests: a fresh network namespace per test.

use std::process::Command;

/// Runs `body` on a thread inside a new, empty network namespace (loopback up).
pub(crate) fn in_fresh_netns<F: FnOnce() + Send + 'static>(body: F) {
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
pub(crate) fn ip(args: &[&str]) {
    let out = ip_output(args);
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip ARGS...` and returns what it printed (for comparing with our reading).
pub(crate) fn ip_output(args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"))
}
