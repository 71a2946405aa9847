//! Running code inside a named network namespace.
//!
//! [`run_in`] enters the namespace on a fresh thread (`setns(CLONE_NEWNET)` moves
//! only the calling thread), runs the closure there and joins: a [`crate::Handle`]
//! opened in it, `/proc/sys/net` files opened in it and processes it spawns all act
//! inside the namespace, and the caller's own thread never leaves its namespace.

use crate::Error;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where `ip netns add NAME` mounts its namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// The namespace file of `name`: an absolute path as given, else `/run/netns/NAME`.
pub fn path_of(name: &str) -> PathBuf {
    if Path::new(name).is_absolute() {
        PathBuf::from(name)
    } else {
        Path::new(NETNS_RUN_DIR).join(name)
    }
}

/// Runs `f` on a thread inside network namespace `name` (see [`path_of`]) and
/// returns its result. A panic in `f` is resumed on the caller's thread.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let netns_err = |io| Error::Netns {
        name: name.to_owned(),
        io,
    };
    let file = File::open(path_of(name)).map_err(netns_err)?;
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            // SAFETY: setns takes no pointers; `file` is an open namespace fd that
            // outlives the call, and CLONE_NEWNET moves only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        });
        match thread.join() {
            Ok(result) => result.map_err(netns_err),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Runs `f` on a thread inside a new, empty network namespace of its own (gone when
/// the thread ends): for computing what a ruleset looks like once loaded, without
/// touching this namespace.
pub fn run_in_new<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        });
        match thread.join() {
            Ok(result) => result.map_err(|io| Error::Netns {
                name: "(new)".to_owned(),
                io,
            }),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
