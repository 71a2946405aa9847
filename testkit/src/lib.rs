//! Test infrastructure shared by the root-only netns suites (`netns-tests`), `xtask`
//! (its demos and CI steps) and the throughput harness (`pd-bench`).
//!
//! Each piece is an RAII guard or a bounded operation:
//! - [`names`]: names unique per process and per call (`<prefix>-<pid>-<n>-<role>`,
//!   interfaces `<prefix><pid%10000><n>`), and [`names::stale_owner`] to recognise what
//!   a killed run left behind;
//! - [`TempDir`]: a private (0700) directory removed on drop, with 0600 files;
//! - [`fresh`]: unit tests of I/O code in a fresh network namespace on a thread;
//! - [`process`]: children in their own process group or not, stopped with SIGTERM
//!   then SIGKILL ([`Guard`]), commands run within a bound ([`capture`], [`run`]),
//!   Ctrl-C turned into an error ([`process::install_interrupt_handler`]), bounded
//!   polling ([`wait_until`], [`wait_for`]);
//! - [`netns`]: network namespaces ([`Namespace`]) whose processes are ended (SIGTERM,
//!   a grace period, SIGKILL) before the namespace is deleted, and sweeps of the
//!   namespaces and UAPI sockets of runs that were killed before their guards ran;
//! - [`nat`]: a NAT lab (two hosts behind nftables NAT routers of chosen kinds, a
//!   "public" namespace between them) with loss, conntrack-timeout and relax knobs;
//! - [`bench_cache`]: where `cargo xtask setup` keeps the peers pd-bench runs that no
//!   package on the machine installs (Debian 13's wireguard-go), and its layout;
//! - [`registry`]: every guard also registers what it owns, so that a panic hook can
//!   undo it where destructors do not run (`panic = "abort"` in release builds).
//!
//! Errors are [`Error`]; callers map them into their own (`anyhow` in xtask, typed in
//! pd-bench) or panic with them (the netns suites).

pub mod bench_cache;
pub mod error;
pub mod fresh;
pub mod names;
pub mod nat;
pub mod netns;
pub mod process;
pub mod registry;
mod tempdir;

pub use error::Error;
pub use netns::Namespace;
pub use process::{capture, cmd, describe, run, wait_for, wait_until, Guard, Output};
pub use tempdir::{write_new_private, TempDir};
