//! The link monitor lives in the shared `portdistrict-netlink` crate (also used by the
//! exit node and control); the dataplane re-exports it. What only the dataplane can
//! test (a TUN moved to another namespace) is tested here.

pub use portdistrict_netlink::{LinkEvent, LinkMonitor};

#[cfg(test)]
#[path = "netlink_tests.rs"]
mod tests;
