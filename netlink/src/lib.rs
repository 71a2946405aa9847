//! A small rtnetlink shell shared by the dataplane (its link monitor), the exit node's
//! plan applier and control: the one way this project changes kernel network state.
//!
//! - [`wire`]: the message layout (pure): requests are built into byte vectors, answers
//!   parsed from them, golden-tested without a socket.
//! - [`Handle`]: a `NETLINK_ROUTE` socket that sends one request at a time with
//!   `NLM_F_ACK` and waits for its acknowledgement (an errno, never English text), or
//!   dumps a table. Links, addresses, routes and rules: add, replace, delete, list.
//! - [`netns`]: runs a closure on a thread that entered a named network namespace, so
//!   that sockets, `/proc/sys/net` and child processes all act inside it.
//! - [`LinkMonitor`]: `RTM_NEWLINK`/`RTM_DELLINK` notifications about one interface.
//!
//! `unsafe` is confined to the socket calls and `setns`, each with a `// SAFETY:` line.

mod error;
mod handle;
mod monitor;
pub mod netns;
mod sys;
mod types;
pub mod wire;

#[cfg(test)]
mod testutil;

pub use error::Error;
pub use handle::Handle;
pub use monitor::{LinkEvent, LinkMonitor};
pub use types::{Address, AddressSpec, Family, Link, Route, RouteKind, Rule, Verb};
