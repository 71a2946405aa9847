//! Unique names for namespaces, interfaces and temporary directories.
//!
//! One counter per process; the pid makes names unique across concurrently running test
//! binaries, the counter across tests of one binary.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// `pd-<pid>-<n>-<role>`: a fresh name for a namespace or a directory.
pub fn unique_name(role: &str) -> String {
    format!("pd-{}-{}-{role}", std::process::id(), next())
}

/// A fresh interface name `<prefix><pid%10000 as 4 digits><n>`; panics if longer than
/// the kernel's 15 characters.
pub fn unique_ifname(prefix: &str) -> String {
    let name = format!("{prefix}{:04}{}", std::process::id() % 10_000, next());
    assert!(
        name.len() <= 15,
        "interface name {name} exceeds 15 characters"
    );
    name
}

/// A directory under the system temp dir, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/<unique_name(role)>` with mode 0700.
    pub fn new(role: &str) -> TempDir {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(unique_name(role));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory with mode 0600 and returns the
    /// file's path.
    pub fn write_private(&self, name: &str, contents: &str) -> PathBuf {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        file.write_all(contents.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_short() {
        let a = unique_ifname("pdw");
        let b = unique_ifname("pdw");
        assert_ne!(a, b);
        assert!(a.starts_with("pdw") && a.len() <= 15);
        let n = unique_name("x");
        assert!(n.starts_with(&format!("pd-{}-", std::process::id())));
        assert!(n.ends_with("-x"));
    }

    #[test]
    fn temp_dir_is_removed_on_drop() {
        let dir = TempDir::new("unit");
        let file = dir.write_private("k", "secret");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
    }
}
