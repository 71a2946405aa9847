//! What the guards own, recorded globally so that it can be undone where destructors
//! do not run.
//!
//! A release build with `panic = "abort"` (pd-bench) never runs `Drop` after a panic.
//! Every guard of this crate registers its resource here when created and unregisters
//! it when it cleaned up; [`install_panic_teardown`] adds a panic hook that undoes
//! whatever is still registered, newest first, before the default hook (and the abort)
//! runs. Without the hook the registry only keeps the list.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::netns;
use crate::process::{signal, signal_group};

/// Something the panic hook must undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A process group to SIGKILL.
    Group(u32),
    /// A single process to SIGKILL.
    Process(u32),
    /// A network namespace to delete (its processes SIGKILLed first).
    Netns(String),
    /// A file or directory to remove.
    Path(PathBuf),
}

/// The live resources, keyed by a serial number.
type Registry = Vec<(u64, Resource)>;

static REGISTRY: Mutex<Registry> = Mutex::new(Vec::new());
static SERIAL: AtomicU64 = AtomicU64::new(0);

/// Records `r`; the returned key removes it again ([`unregister`]).
pub fn register(r: Resource) -> u64 {
    let key = SERIAL.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut reg) = REGISTRY.lock() {
        reg.push((key, r));
    }
    key
}

/// Forgets the resource registered under `key` (its guard cleaned it up).
pub fn unregister(key: u64) {
    if let Ok(mut reg) = REGISTRY.lock() {
        reg.retain(|(k, _)| *k != key);
    }
}

/// Whether `r` is registered (for tests of the guards).
pub fn is_registered(r: &Resource) -> bool {
    REGISTRY
        .lock()
        .map(|reg| reg.iter().any(|(_, x)| x == r))
        .unwrap_or(false)
}

/// Installs a panic hook that undoes every registered resource before the previous
/// hook runs.
pub fn install_panic_teardown() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        teardown_all();
        default(info);
    }));
}

/// Undoes every registered resource, newest first. Never blocks on the registry lock
/// (a panic while it is held skips the teardown rather than deadlocking), and releases
/// it before undoing anything (deleting a namespace runs `ip`, whose guard registers).
fn teardown_all() {
    let mut taken = match REGISTRY.try_lock() {
        Ok(mut reg) => std::mem::take(&mut *reg),
        Err(_) => return,
    };
    teardown(&mut taken);
}

/// Undoes and empties `reg`, newest first.
fn teardown(reg: &mut Registry) {
    while let Some((_, r)) = reg.pop() {
        match r {
            Resource::Group(pid) => signal_group(pid, libc::SIGKILL),
            Resource::Process(pid) => signal(pid, libc::SIGKILL),
            Resource::Netns(name) => {
                netns::delete(&name, std::time::Duration::ZERO);
            }
            Resource::Path(path) => {
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt as _;
    use std::os::unix::process::ExitStatusExt as _;

    #[test]
    fn teardown_kills_groups_and_processes_and_removes_paths() {
        let dir = std::env::temp_dir().join(format!("pdtk-registry-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let mut group = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let mut single = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut reg: Registry = vec![
            (1, Resource::Path(dir.clone())),
            (2, Resource::Group(group.id())),
            (3, Resource::Process(single.id())),
        ];
        teardown(&mut reg);
        assert!(reg.is_empty());
        assert!(!dir.exists());
        assert_eq!(group.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert_eq!(single.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn unregister_forgets() {
        let r = Resource::Path(PathBuf::from("/nonexistent/pdtk-unregister"));
        let key = register(r.clone());
        assert!(is_registered(&r));
        unregister(key);
        assert!(!is_registered(&r));
    }
}
