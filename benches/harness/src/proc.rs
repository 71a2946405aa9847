//! The harness's use of the testkit: child processes with bounded waits, Ctrl-C
//! handling and cleanup on every exit path.
//!
//! Every child starts in a process group of its own ([`Guard`], from the testkit), so a
//! Ctrl-C in the terminal reaches only the harness: the signal handler sets a flag,
//! every waiting loop looks at it and returns [`Error::Interrupted`], and the RAII
//! guards clean up while the error propagates. The release profile aborts on panic, so
//! destructors would not run then: every guard also registers what it owns in the
//! testkit's registry, which the panic hook installed here tears down (best effort)
//! before the abort.

use std::time::Duration;

pub(crate) use portdistrict_testkit::process::{check_interrupt, sleep, POLL};
pub(crate) use portdistrict_testkit::{capture, cmd, run, Guard};

use crate::error::Error;

/// Routes SIGINT, SIGTERM and SIGHUP to the interrupt flag, and installs the panic
/// hook that tears down everything registered.
pub(crate) fn install_handlers() {
    portdistrict_testkit::process::install_interrupt_handler();
    portdistrict_testkit::registry::install_panic_teardown();
}

/// Polls `cond` until it is true (`Ok(true)`), `limit` passes (`Ok(false)`) or Ctrl-C.
pub(crate) fn wait_for(
    limit: Duration,
    cond: impl FnMut() -> Result<bool, Error>,
) -> Result<bool, Error> {
    portdistrict_testkit::wait_for(limit, POLL * 2, cond)
}

/// `name` on `$PATH`, else in cargo's bin directory (`~/.cargo/bin`).
pub(crate) fn find_program(name: &str) -> Option<std::path::PathBuf> {
    portdistrict_testkit::process::find_program(name, &[])
}

/// Fails with [`Error::NotRoot`] unless the effective uid is 0.
pub(crate) fn require_root() -> Result<(), Error> {
    match portdistrict_testkit::process::euid() {
        Some(0) => Ok(()),
        Some(euid) => Err(Error::NotRoot(euid.to_string())),
        None => Err(Error::NotRoot("unknown".to_owned())),
    }
}
