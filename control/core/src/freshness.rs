//! Record freshness (pure: values in, values out; the time is an argument): what the
//! daemon remembers of every record name it read, so that
//!
//! - a **replay** of an older record (a removed device that still holds the zone's TSIG
//!   key, or anyone on the DNS path, putting back a record captured earlier) is
//!   rejected: the highest `issued` seen per name is a high-water mark, and a record
//!   issued before it is a rollback;
//! - a record that fails (altered, expired, unreachable, rolled back) keeps the devices
//!   behind it connected only for a **grace period** that ends when the last record
//!   that verified at that name expires; after that they are removed.
//!
//! The control shell persists the marks in the state directory, so that a restarted
//! daemon neither forgets them nor grants a new grace period ([`Freshness`] is
//! serde-serializable for that).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv6Addr;

/// The newest record that verified at one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Its `issued` (Unix seconds): the high-water mark.
    pub issued: u64,
    /// Its `expires`: where a grace period ends.
    pub expires: u64,
}

/// The marks of every record name read, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    /// Record name (without the final dot) -> its mark.
    pub names: BTreeMap<String, Mark>,
}

/// Why a record that verified is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FreshnessError {
    /// Older than one already seen at the same name.
    #[error("rollback: this record was issued at {got} (Unix time), before the one already seen at this name (issued at {seen}): a replayed old record, ignored")]
    Rollback {
        /// The replayed record's `issued`.
        got: u64,
        /// The high-water mark.
        seen: u64,
    },
}

/// What happens to the devices behind a record that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grace {
    /// They stay as they are until this time (the last good record's expiry).
    Until(u64),
    /// The last good record expired at this time: they are removed.
    Expired(u64),
    /// No record ever verified at this name: nothing to keep.
    Never,
}

impl Freshness {
    /// Takes a record that verified at `name` (`issued`, `expires`): raises the mark,
    /// or refuses a record older than the mark. The same record read again (same
    /// `issued`) is accepted.
    pub fn accept(&mut self, name: &str, issued: u64, expires: u64) -> Result<(), FreshnessError> {
        match self.names.get_mut(name) {
            Some(m) if issued < m.issued => Err(FreshnessError::Rollback {
                got: issued,
                seen: m.issued,
            }),
            Some(m) => {
                if issued > m.issued {
                    *m = Mark { issued, expires };
                } else {
                    m.expires = m.expires.max(expires);
                }
                Ok(())
            }
            None => {
                self.names.insert(name.to_owned(), Mark { issued, expires });
                Ok(())
            }
        }
    }

    /// The grace period of `name`'s devices at `now`, when its record failed.
    pub fn grace(&self, name: &str, now: u64) -> Grace {
        match self.names.get(name) {
            Some(m) if now < m.expires => Grace::Until(m.expires),
            Some(m) => Grace::Expired(m.expires),
            None => Grace::Never,
        }
    }
}

/// A prefix whose connected peers stay as they are (a record behind them failed and
/// is in its grace period): an identity's /48 or a device's /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// The prefix.
    pub prefix: Ipv6Addr,
    /// Its length: 48 or 64.
    pub len: u8,
    /// When the grace period ends.
    pub until: u64,
}

impl Kept {
    /// Whether `a` is inside the prefix.
    pub fn contains(&self, a: Ipv6Addr) -> bool {
        crate::overlay::contains(self.prefix, self.len, a)
    }
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
    fn a_replayed_older_record_is_a_rollback() {
        let mut f = Freshness::default();
        let (i1, e1) = rec(1000);
        let (i2, e2) = rec(2000);
        f.accept("_portdistrict.desk.bob.pd.test", i1, e1).unwrap();
        f.accept("_portdistrict.desk.bob.pd.test", i2, e2).unwrap();
        // The same record read again is fine; the older one is not.
        f.accept("_portdistrict.desk.bob.pd.test", i2, e2).unwrap();
        let e = f
            .accept("_portdistrict.desk.bob.pd.test", i1, e1)
            .unwrap_err();
        assert_eq!(e, FreshnessError::Rollback { got: i1, seen: i2 });
        assert!(e.to_string().starts_with("rollback"), "{e}");
        // The refusal changes nothing; other names are independent.
        assert_eq!(
            f.names["_portdistrict.desk.bob.pd.test"],
            Mark {
                issued: i2,
                expires: e2
            }
        );
        f.accept("_portdistrict.bob.pd.test", i1, e1).unwrap();
    }

    #[test]
    fn the_grace_period_ends_at_the_last_good_records_expiry() {
        let mut f = Freshness::default();
        let name = "_portdistrict.bob.pd.test";
        assert_eq!(f.grace(name, 5), Grace::Never);
        let (i, e) = rec(1000);
        f.accept(name, i, e).unwrap();
        assert_eq!(f.grace(name, 1001), Grace::Until(e));
        assert_eq!(f.grace(name, e - 1), Grace::Until(e));
        assert_eq!(f.grace(name, e), Grace::Expired(e));
        assert_eq!(f.grace(name, e + 86_400), Grace::Expired(e));
        // A rolled-back record does not extend it.
        let (i2, e2) = rec(1500);
        f.accept(name, i2, e2).unwrap();
        assert!(f.accept(name, i, e + 99_999).is_err());
        assert_eq!(f.grace(name, e2), Grace::Expired(e2));
    }
}
