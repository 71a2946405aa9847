//! Test helpers: run a test body in a fresh, throwaway network namespace.

use std::process::Command;

/// Runs `body` on a new thread that has unshared its network namespace.
///
/// Everything the body creates there (TUN, dummy links, sockets) disappears with the
/// namespace when the thread ends, even if the body panics; panics are propagated.
/// Child processes (`ip`) spawned from the body inherit the thread's namespace.
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
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
