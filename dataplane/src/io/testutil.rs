//! Test helpers: run a test body in a fresh, throwaway network namespace (from
//! testkit, shared with the netlink crate's tests).

pub(crate) use portdistrict_testkit::fresh::{in_fresh_netns, ip};
