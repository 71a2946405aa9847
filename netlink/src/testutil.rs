//! Helpers of the root-only tests: a fresh network namespace per test (from testkit).

pub(crate) use portdistrict_testkit::fresh::{in_fresh_netns, ip, ip_output};
