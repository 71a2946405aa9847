//! Network namespaces that clean up after themselves, and sweeps of what killed runs
//! left behind.
//!
//! A [`Namespace`] is deleted on drop after the processes still inside it are ended:
//! SIGTERM first (so that a WireGuard implementation removes its UAPI socket and a
//! daemon takes its changes back), then, after the namespace's grace period, SIGKILL
//! for what is left. A run killed before its guards ran leaves namespaces and sockets
//! whose names carry its pid; [`sweep_stale_namespaces`] and [`sweep_sockets`] remove
//! them on the next run. [`run_in`] runs a closure inside a named namespace (sockets
//! it creates stay there, wherever they are used afterwards).

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::names::stale_owner;
use crate::process::{cmd, run, run_cleanup, run_quietly, signal, wait_until};
use crate::registry::{self, Resource};
use crate::Error;

/// Where WireGuard implementations put their UAPI sockets (wg(8)'s convention; the
/// same as `portdistrict_wg::uapi::SOCKET_DIR`, spelled here so that the test tooling
/// does not build the protocol core).
pub const WIREGUARD_RUN_DIR: &str = "/var/run/wireguard";
/// Where `ip netns add NAME` mounts its namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// Bound for each `ip` command run here.
const IP_LIMIT: Duration = Duration::from_secs(10);
/// How often the processes of a namespace being emptied are looked at.
const PIDS_POLL: Duration = Duration::from_millis(50);

/// The UAPI socket of interface `ifname`.
pub fn uapi_socket(ifname: &str) -> PathBuf {
    Path::new(WIREGUARD_RUN_DIR).join(format!("{ifname}.sock"))
}

/// A network namespace with its loopback up; deleted on drop, after its processes are
/// ended (SIGTERM, the grace period, SIGKILL).
#[derive(Debug)]
pub struct Namespace {
    name: String,
    grace: Duration,
    key: u64,
}

impl Namespace {
    /// Creates namespace `name` (`ip netns add`) and brings its `lo` up. Processes
    /// still inside when it is dropped get `grace` between SIGTERM and SIGKILL.
    pub fn create(name: &str, grace: Duration) -> Result<Namespace, Error> {
        run(&mut cmd(&["ip", "netns", "add", name]), IP_LIMIT)?;
        let ns = Namespace {
            name: name.to_owned(),
            grace,
            key: registry::register(Resource::Netns(name.to_owned())),
        };
        run(
            &mut cmd(&["ip", "-n", name, "link", "set", "lo", "up"]),
            IP_LIMIT,
        )?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME argv...`, ready to run or spawn.
    pub fn command(&self, argv: &[&str]) -> std::process::Command {
        let mut c = cmd(&["ip", "netns", "exec", &self.name]);
        c.args(argv);
        c
    }

    /// Runs `f` on a thread inside this namespace ([`run_in`]).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        run_in(&self.name, f)
    }
}

/// Runs `f` on a fresh thread inside network namespace `name` (`/run/netns/NAME`) and
/// returns its result; a panic in `f` is resumed on the caller's thread.
///
/// `setns(CLONE_NEWNET)` moves only that thread, so the caller never leaves its
/// namespace. What `f` creates there stays there: a socket bound inside keeps sending
/// and receiving in the namespace from any thread it is later used on, `/proc/sys/net`
/// files opened inside are the namespace's, processes spawned inside run there. (The
/// same helper as `portdistrict_netlink::netns::run_in`, which cannot be shared: the
/// production crate must not depend on test tooling, nor this crate on it.)
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let netns_err = |source| Error::Netns {
        name: name.to_owned(),
        source,
    };
    let file = File::open(Path::new(NETNS_RUN_DIR).join(name)).map_err(netns_err)?;
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

impl Drop for Namespace {
    fn drop(&mut self) {
        delete(&self.name, self.grace);
        registry::unregister(self.key);
    }
}

/// The processes inside namespace `name` (none if it does not exist).
pub fn pids(name: &str) -> Vec<u32> {
    run_quietly(&["ip", "netns", "pids", name], IP_LIMIT)
        .map(|o| {
            o.stdout
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Ends every process inside namespace `name`: SIGTERM, up to `grace` for them to
/// exit, then SIGKILL for what is left (at once if `grace` is zero).
pub fn end_processes(name: &str, grace: Duration) {
    let initial = pids(name);
    if initial.is_empty() {
        return;
    }
    if !grace.is_zero() {
        for &pid in &initial {
            signal(pid, libc::SIGTERM);
        }
        wait_until(grace, PIDS_POLL, || pids(name).is_empty());
    }
    for pid in pids(name) {
        signal(pid, libc::SIGKILL);
    }
}

/// Ends the processes of namespace `name` ([`end_processes`]) and deletes it; whether
/// `ip netns del` succeeded. Errors are otherwise ignored: this runs on cleanup paths.
pub fn delete(name: &str, grace: Duration) -> bool {
    end_processes(name, grace);
    run_cleanup(&["ip", "netns", "del", name], IP_LIMIT)
}

/// Deletes the namespaces `<prefix><pid>-...` whose pid no longer runs (left by a run
/// killed before its guards ran), SIGKILLing what is inside; returns their names.
pub fn sweep_stale_namespaces(prefix: &str) -> Vec<String> {
    let Some(list) = run_quietly(&["ip", "netns", "list"], IP_LIMIT) else {
        return Vec::new();
    };
    let stale: Vec<String> = list
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| stale_owner(name, prefix).is_some())
        .map(str::to_owned)
        .collect();
    for name in &stale {
        delete(name, Duration::ZERO);
    }
    stale
}

/// Removes the UAPI sockets `<WIREGUARD_RUN_DIR>/<name>.sock` for which `stale(name,
/// path)` holds; returns how many.
pub fn sweep_sockets(stale: impl Fn(&str, &Path) -> bool) -> usize {
    let Ok(dir) = std::fs::read_dir(WIREGUARD_RUN_DIR) else {
        return 0;
    };
    let mut removed = 0;
    for path in dir.filter_map(|e| Some(e.ok()?.path())) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".sock") && stale(name, &path) && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether nobody listens on the unix socket at `path` any more (connecting is
/// refused: the file outlived its server).
pub fn listener_gone(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths() {
        assert_eq!(
            uapi_socket("pdw12340"),
            PathBuf::from("/var/run/wireguard/pdw12340.sock")
        );
    }

    #[test]
    fn a_socket_without_listener_is_gone_and_a_live_one_is_not() {
        let dir = crate::TempDir::new(&crate::names::unique_name("pdtk", "sock")).unwrap();
        let path = dir.path().join("x.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(!listener_gone(&path));
        drop(listener);
        assert!(listener_gone(&path));
        assert!(!listener_gone(&dir.path().join("missing.sock")));
    }

    #[test]
    fn a_missing_namespace_cannot_be_entered() {
        let err = run_in("pdtk-no-such-namespace", || ()).unwrap_err();
        assert!(
            matches!(&err, Error::Netns { name, .. } if name == "pdtk-no-such-namespace"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_namespace_has_no_processes() {
        assert!(pids("pdtk-no-such-namespace").is_empty());
        end_processes("pdtk-no-such-namespace", Duration::from_secs(1));
    }
}
