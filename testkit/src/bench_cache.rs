//! The bench cache: where `cargo xtask setup` keeps the peers pd-bench runs that no
//! package on this machine installs, so that setup (which fills it) and pd-bench (which
//! reads it) agree on one layout.
//!
//! Today it holds one peer, Debian 13 (trixie)'s `wireguard-go`, the first Debian build
//! with wireguard-go's TUN TSO/GRO and UDP GSO/GRO (Debian 12 ships the 2022 release).
//! Under [`root`] (`/var/cache/portdistrict-bench`, or `$PD_BENCH_CACHE`), its
//! directory [`CachedPeer::dir`] holds:
//! - `apt/`: the apt source list, package lists and archive cache that fetched it (the
//!   machine's own apt sources, lists and installed packages are not touched);
//! - `deb/`: the downloaded `.deb`;
//! - `root/`: the `.deb` extracted by `dpkg-deb -x` (the daemon is `root/usr/bin/wireguard-go`);
//! - `VERSION`: the package's Debian version, written last: the peer is cached iff it
//!   exists (remove the directory to fetch again).

use std::path::{Path, PathBuf};

/// The cache's default location: machine-wide, like the apt packages setup installs,
/// so it outlives `cargo clean` and fresh clones (CI runs in one).
pub const DEFAULT_ROOT: &str = "/var/cache/portdistrict-bench";

/// The environment variable that moves the cache elsewhere.
pub const ROOT_ENV: &str = "PD_BENCH_CACHE";

/// `$PD_BENCH_CACHE` when set and not empty, else [`DEFAULT_ROOT`].
pub fn root() -> PathBuf {
    std::env::var_os(ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from)
}

/// One peer fetched as a Debian package into the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPeer {
    /// The Debian package.
    pub package: &'static str,
    /// The Debian suite it comes from.
    pub suite: &'static str,
    /// The release the suite is (`13`), for labels.
    pub release: &'static str,
    /// The executable inside the package, relative to its root.
    pub executable: &'static str,
    /// Its directory in the cache.
    pub dir: PathBuf,
}

impl CachedPeer {
    /// Debian 13 (trixie)'s `wireguard-go`, in the cache under `root`.
    pub fn wireguard_go_debian13(root: &Path) -> CachedPeer {
        CachedPeer {
            package: "wireguard-go",
            suite: "trixie",
            release: "13",
            executable: "usr/bin/wireguard-go",
            dir: root.join("wireguard-go-debian13"),
        }
    }

    /// The extracted package's root directory.
    pub fn extracted(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The executable, once extracted.
    pub fn binary(&self) -> PathBuf {
        self.extracted().join(self.executable)
    }

    /// The file holding the package's Debian version.
    pub fn version_file(&self) -> PathBuf {
        self.dir.join("VERSION")
    }

    /// The cached package's Debian version (e.g. `0.0.20231211-1+b9`), or `None` when
    /// the peer is not (completely) cached: no `VERSION`, an empty one, or no binary.
    pub fn cached_version(&self) -> Option<String> {
        let v = std::fs::read_to_string(self.version_file()).ok()?;
        let v = v.trim();
        (!v.is_empty() && self.binary().is_file()).then(|| v.to_owned())
    }

    /// How pd-bench and setup name it: `wireguard-go 0.0.20231211 (Debian 13)`.
    pub fn label(&self, debian_version: &str) -> String {
        format!(
            "{} {} (Debian {})",
            self.package,
            upstream_version(debian_version),
            self.release
        )
    }
}

/// The upstream part of a Debian version `[epoch:]upstream[-revision]`: without the
/// epoch and without the Debian revision (`1:2.3-4+b1` → `2.3`).
pub fn upstream_version(debian_version: &str) -> &str {
    let v = debian_version.trim();
    let v = match v.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            rest
        }
        _ => v,
    };
    v.rsplit_once('-').map_or(v, |(upstream, _)| upstream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_version_drops_epoch_and_revision() {
        assert_eq!(upstream_version("0.0.20231211-1+b9"), "0.0.20231211");
        assert_eq!(upstream_version("0.0.20220316-1+b4"), "0.0.20220316");
        assert_eq!(upstream_version("1:2.3-4"), "2.3");
        // A hyphen in the upstream part: the revision is after the last one.
        assert_eq!(upstream_version("1.0-rc1-2"), "1.0-rc1");
        // Native packages have no revision.
        assert_eq!(upstream_version("2024.1"), "2024.1");
        assert_eq!(upstream_version(" 3.0-1\n"), "3.0");
    }

    #[test]
    fn layout_and_label() {
        let p = CachedPeer::wireguard_go_debian13(Path::new("/c"));
        assert_eq!(p.dir, Path::new("/c/wireguard-go-debian13"));
        assert_eq!(
            p.binary(),
            Path::new("/c/wireguard-go-debian13/root/usr/bin/wireguard-go")
        );
        assert_eq!(
            p.version_file(),
            Path::new("/c/wireguard-go-debian13/VERSION")
        );
        assert_eq!(
            p.label("0.0.20231211-1+b9"),
            "wireguard-go 0.0.20231211 (Debian 13)"
        );
    }

    #[test]
    fn cached_only_with_a_version_and_the_binary() {
        let dir = crate::TempDir::new(&format!("pd-cache-test-{}", std::process::id())).unwrap();
        let p = CachedPeer::wireguard_go_debian13(dir.path());
        assert_eq!(p.cached_version(), None);
        std::fs::create_dir_all(p.binary().parent().unwrap()).unwrap();
        std::fs::write(p.binary(), b"").unwrap();
        assert_eq!(p.cached_version(), None, "no VERSION yet");
        std::fs::write(p.version_file(), b" \n").unwrap();
        assert_eq!(p.cached_version(), None, "an empty VERSION");
        std::fs::write(p.version_file(), b"0.0.20231211-1+b9\n").unwrap();
        assert_eq!(p.cached_version().as_deref(), Some("0.0.20231211-1+b9"));
    }
}
