//! Unique names for namespaces, interfaces and temporary directories, from the
//! testkit: `pd-<pid>-<n>-<role>` for namespaces and directories (the prefix the stale
//! sweep looks for), `<prefix><pid%10000><n>` for interfaces.

use std::path::{Path, PathBuf};

pub use portdistrict_testkit::names::unique_ifname;

/// The prefix of this harness's namespace and directory names.
pub(crate) const NAME_PREFIX: &str = "pd";

/// `pd-<pid>-<n>-<role>`: a fresh name for a namespace or a directory.
pub fn unique_name(role: &str) -> String {
    portdistrict_testkit::names::unique_name(NAME_PREFIX, role)
}

/// A directory under the system temp dir (mode 0700), removed with its contents on
/// drop: the testkit's, with constructors that panic with context.
#[derive(Debug)]
pub struct TempDir(portdistrict_testkit::TempDir);

impl TempDir {
    /// Creates `<tmp>/<unique_name(role)>` with mode 0700.
    pub fn new(role: &str) -> TempDir {
        let dir = portdistrict_testkit::TempDir::new(&unique_name(role));
        TempDir(dir.unwrap_or_else(|e| panic!("{e}")))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes `contents` to `name` inside the directory with mode 0600 and returns the
    /// file's path.
    pub fn write_private(&self, name: &str, contents: &str) -> PathBuf {
        self.0
            .write_private(name, contents)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_harness_prefix() {
        let n = unique_name("x");
        assert!(n.starts_with(&format!("pd-{}-", std::process::id())), "{n}");
        assert!(n.ends_with("-x"));
    }

    #[test]
    fn temp_dir_is_named_private_and_removed_on_drop() {
        let dir = TempDir::new("unit");
        let leaf = dir.path().file_name().unwrap().to_str().unwrap().to_owned();
        assert!(leaf.starts_with("pd-") && leaf.ends_with("-unit"), "{leaf}");
        let file = dir.write_private("k", "secret");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
    }
}
