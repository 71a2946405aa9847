//! Record freshness: the pure marks and grace periods live in the control core
//! ([`portdistrict_control_core::freshness`], re-exported here); this shell keeps them
//! in the state directory ([`load`], [`save`]), so that a restarted daemon neither
//! forgets them nor grants a new grace period.

pub use portdistrict_control_core::freshness::*;

use anyhow::Context as _;
use std::path::PathBuf;

fn path(state: &std::path::Path) -> PathBuf {
    state.join("records-seen.json")
}

/// The marks kept in `state` (none yet: empty).
pub fn load(state: &std::path::Path) -> anyhow::Result<Freshness> {
    let p = path(state);
    match std::fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t).with_context(|| {
            format!(
                "{} is damaged (the record high-water marks); restore it, or remove it to start over (replays of records older than the current ones are then accepted once)",
                p.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Freshness::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Writes the marks to `state` (atomically, mode 0600).
pub fn save(state: &std::path::Path, f: &Freshness) -> anyhow::Result<()> {
    let p = path(state);
    portdistrict_exitnode::state::write_atomic_mode(
        &p,
        serde_json::to_string_pretty(f)?.as_bytes(),
        0o600,
    )
    .with_context(|| format!("writing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFETIME: u64 = 3600;

    /// A virtual clock: records issued at `t` expire at `t + LIFETIME`.
    fn rec(t: u64) -> (u64, u64) {
        (t, t + LIFETIME)
    }

    #[test]
    fn a_restart_keeps_the_high_water_mark() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("pd-fresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(load(&dir).unwrap(), Freshness::default());
        let mut f = Freshness::default();
        let (i1, e1) = rec(1000);
        let (i2, e2) = rec(2000);
        f.accept("_portdistrict.desk.bob.pd.test", i2, e2).unwrap();
        save(&dir, &f).unwrap();
        let mode = std::fs::metadata(path(&dir)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A new daemon loads the marks: the older record is still a rollback, and the
        // grace period still ends at the same time.
        let mut again = load(&dir).unwrap();
        assert!(matches!(
            again.accept("_portdistrict.desk.bob.pd.test", i1, e1),
            Err(FreshnessError::Rollback { .. })
        ));
        assert_eq!(
            again.grace("_portdistrict.desk.bob.pd.test", e2),
            Grace::Expired(e2)
        );
        std::fs::write(path(&dir), "{not json").unwrap();
        let e = load(&dir).unwrap_err();
        assert!(
            format!("{e:#}").contains("records-seen.json is damaged"),
            "{e:#}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
