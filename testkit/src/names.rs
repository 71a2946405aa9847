//! Unique names for namespaces, interfaces and temporary directories.
//!
//! One counter per process; the pid makes names unique across concurrently running
//! programs, the counter across the calls of one. Because the pid is in the name, a
//! later run can tell what an earlier run that was killed left behind
//! ([`stale_owner`]).

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// The kernel's limit on interface names (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// `<prefix>-<pid>-<n>-<role>`: a fresh name for a namespace or a directory.
pub fn unique_name(prefix: &str, role: &str) -> String {
    format!("{prefix}-{}-{}-{role}", std::process::id(), next())
}

/// A fresh interface name `<prefix><pid%10000 as 4 digits><n>`; panics if it is longer
/// than the kernel's [`IFNAME_MAX`] characters (a prefix too long is a bug in the
/// caller).
pub fn unique_ifname(prefix: &str) -> String {
    let name = format!("{prefix}{:04}{}", std::process::id() % 10_000, next());
    assert!(
        name.len() <= IFNAME_MAX,
        "interface name {name} exceeds {IFNAME_MAX} characters"
    );
    name
}

/// The pid in a name `<prefix><pid>-...` if no such process runs any more: the name
/// belongs to an earlier run that could not clean up. `None` for names of live
/// processes and for names that do not have that shape.
pub fn stale_owner(name: &str, prefix: &str) -> Option<u32> {
    let pid = owner(name, prefix)?;
    (!Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// The pid in a name `<prefix><pid>-...`.
fn owner(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split_once('-')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_carry_the_pid() {
        let a = unique_ifname("pdw");
        let b = unique_ifname("pdw");
        assert_ne!(a, b);
        assert!(a.starts_with("pdw") && a.len() <= IFNAME_MAX);
        let n = unique_name("pd", "x");
        assert!(n.starts_with(&format!("pd-{}-", std::process::id())), "{n}");
        assert!(n.ends_with("-x"));
        assert_ne!(n, unique_name("pd", "x"));
        assert_eq!(owner(&n, "pd-"), Some(std::process::id()));
    }

    #[test]
    #[should_panic(expected = "exceeds 15 characters")]
    fn an_interface_name_too_long_panics() {
        unique_ifname("much-too-long-");
    }

    #[test]
    fn stale_names() {
        let me = std::process::id();
        assert_eq!(stale_owner(&format!("pdb-{me}-gotatun-l"), "pdb-"), None);
        assert_eq!(
            stale_owner("pdb-4294967295-bare-veth-r", "pdb-"),
            Some(u32::MAX)
        );
        assert_eq!(stale_owner("pb4294967295-2l.sock", "pb"), Some(u32::MAX));
        assert_eq!(stale_owner("pd-4294967295-3-left", "pd-"), Some(u32::MAX));
        assert_eq!(stale_owner("pd-123-4-left", "pdb-"), None);
        assert_eq!(stale_owner("pbx-1l.sock", "pb"), None);
        assert_eq!(stale_owner("wg0.sock", "pb"), None);
    }
}
