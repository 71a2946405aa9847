//! State files: written whole or not at all (temp file in the same directory, fsync,
//! rename, fsync of the directory), so a crash never loses or tears them. State files
//! are private (0600) and live in private directories (0700): some hold secrets
//! (invite tokens, keys), all of them say who talks to whom.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// The mode of every state file.
pub const FILE_MODE: u32 = 0o600;
/// The mode of every state and run directory.
pub const DIR_MODE: u32 = 0o700;

/// Replaces the state file `path` with `bytes` atomically; the file is mode 0600 from
/// its creation on (whatever mode the file it replaces had).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, bytes, FILE_MODE)
}

/// [`write_atomic`] for a file that other users must read (a resolver file in /etc):
/// mode 0644.
pub fn write_atomic_public(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, bytes, 0o644)
}

/// Creates the state or run directory `dir` (and its missing parents) with mode 0700,
/// and makes an existing one private: its mode is set to 0700 when others or the group
/// may use it, and so is every state file in it readable by them set to 0600. A
/// world-writable directory (such as /tmp) is refused: it is never ours to change.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by everyone: state needs a private directory",
                dir.display()
            ),
        ));
    }
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // Symbolic links and sockets are left alone; only plain files are state.
        let meta = std::fs::symlink_metadata(entry.path())?;
        if meta.is_file() {
            private_file(&entry.path())?;
        }
    }
    Ok(())
}

/// Sets an existing state file that the group or others may read to 0600 (a missing
/// file is no error).
pub fn private_file(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// [`write_atomic`] with the file's `mode`: the temp file is created with it (never
/// more open than that, not even for a moment) and set to exactly it before the rename.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A temp file left by a crashed writer with the same pid goes first.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // Exactly `mode`, whatever the umask took away or would have let through.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn state_files_are_private_and_a_public_one_is_fixed() {
        let dir = std::env::temp_dir().join(format!("pd-state-mode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("store.json");
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"{ }").unwrap();
        assert_eq!(mode(&path), 0o600);
        write_atomic_public(&dir.join("resolv.conf"), b"nameserver 192.0.2.1\n").unwrap();
        assert_eq!(mode(&dir.join("resolv.conf")), 0o644);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn private_dirs_are_made_0700_and_fix_what_is_in_them() {
        let base = std::env::temp_dir().join(format!("pd-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("state/exit");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&base.join("state")), 0o700);
        // An existing directory and file that others may read are made private.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("store.json");
        std::fs::write(&file, "{}").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600));
        private_file(&dir.join("missing")).unwrap();
        // A world-writable directory is refused and left as it is.
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = private_dir(&open).unwrap_err();
        assert!(e.to_string().contains("writable by everyone"), "{e}");
        assert_eq!(mode(&open), 0o1777);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn replaces_whole_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("pd-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("undo.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["undo.json"]);
        assert_eq!(mode(&path), 0o600);
        let secret = dir.join("key");
        write_atomic_mode(&secret, b"s", 0o600).unwrap();
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_file(&secret).unwrap();
        // A directory that does not exist is an error, and nothing is written.
        assert!(write_atomic(&dir.join("missing/undo.json"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
