//! Private temporary directories and files.

use std::path::{Path, PathBuf};

use crate::registry::{self, Resource};
use crate::Error;

/// A directory (mode 0700) removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    key: u64,
}

impl TempDir {
    /// Creates `<system temp dir>/<name>`, which must not exist yet.
    pub fn new(name: &str) -> Result<TempDir, Error> {
        TempDir::create(std::env::temp_dir().join(name))
    }

    /// Creates `<system temp dir>/<name>`, removing a leftover of that name first.
    pub fn replacing(name: &str) -> Result<TempDir, Error> {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        TempDir::create(path)
    }

    fn create(path: PathBuf) -> Result<TempDir, Error> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| Error::Io {
                action: "cannot create",
                path: path.clone(),
                source,
            })?;
        let key = registry::register(Resource::Path(path.clone()));
        Ok(TempDir { path, key })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory with mode 0600 (replacing the
    /// file's contents if it exists) and returns the file's path.
    pub fn write_private(&self, name: &str, contents: &str) -> Result<PathBuf, Error> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.path.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .map_err(|source| Error::Io {
                action: "cannot write",
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        registry::unregister(self.key);
    }
}

/// Writes `contents` to a new file `path` (which must not exist) readable by its owner
/// only.
pub fn write_new_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|source| Error::Io {
            action: "cannot write",
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::unique_name;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_and_removed_on_drop() {
        let dir = TempDir::new(&unique_name("pdtk", "unit")).unwrap();
        assert_eq!(mode(dir.path()), 0o700);
        let file = dir.write_private("k", "secret").unwrap();
        assert_eq!(mode(&file), 0o600);
        dir.write_private("k", "new").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn new_refuses_an_existing_directory_and_replacing_takes_it_over() {
        let name = unique_name("pdtk", "exists");
        let first = TempDir::new(&name).unwrap();
        std::fs::write(first.path().join("old"), "x").unwrap();
        let e = TempDir::new(&name).unwrap_err();
        assert!(e.to_string().contains("cannot create"), "{e}");
        std::mem::forget(first);
        let second = TempDir::replacing(&name).unwrap();
        assert!(!second.path().join("old").exists());
    }

    #[test]
    fn write_new_private_refuses_to_overwrite() {
        let dir = TempDir::new(&unique_name("pdtk", "new")).unwrap();
        let p = dir.path().join("key");
        write_new_private(&p, "a").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert!(write_new_private(&p, "b").is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a");
    }
}
