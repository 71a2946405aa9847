//! The control socket between the `portdistrict` CLI and a running daemon
//! (`portdistrictd`, `exit serve`): typed JSON requests and answers, one per line
//! ([`protocol`], pure), the daemon's listener ([`server`]) and the CLI's caller
//! ([`client`]); [`handle`] runs a request in the daemon with the same library code the
//! CLI runs offline, so that a command prints the same either way.
//!
//! Sockets: `RUN_DIR/exit.sock` (`exit serve`) and `RUN_DIR/portdistrictd.sock`
//! (`portdistrictd`), mode 0660; callers other than root must be in the daemon's
//! `--control-group` (checked on `SO_PEERCRED`).

pub mod client;
pub mod handle;
pub mod protocol;
pub mod server;

pub use protocol::{Access, Answer, CtlError, Envelope, PeerVerb, Request};
pub use server::Server;

use crate::Dirs;
use anyhow::Context as _;
use std::path::PathBuf;

/// Which daemon a socket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// `portdistrict exit serve`.
    Exit,
    /// `portdistrictd`.
    Control,
}

impl Daemon {
    /// Its socket under the run directory.
    pub fn socket(self, dirs: &Dirs) -> PathBuf {
        dirs.run.join(match self {
            Daemon::Exit => "exit.sock",
            Daemon::Control => "portdistrictd.sock",
        })
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Exit => "exit serve",
            Daemon::Control => "portdistrictd",
        }
    }
}

/// `--control-group GROUP` (a name from `/etc/group`, or a number).
pub fn parse_group(spec: &str) -> anyhow::Result<u32> {
    let etc = std::fs::read_to_string("/etc/group").unwrap_or_default();
    protocol::group_id(spec, &etc).ok_or_else(|| {
        anyhow::anyhow!("--control-group {spec}: no such group in /etc/group (give its number)")
    })
}

/// `dirs.state` as daemon and CLI compare it: canonical where it can be resolved,
/// else absolute as given.
pub(crate) fn state_dir(dirs: &Dirs) -> PathBuf {
    std::fs::canonicalize(&dirs.state)
        .or_else(|_| std::path::absolute(&dirs.state))
        .unwrap_or_else(|_| dirs.state.clone())
}

/// A daemon's listening socket and what it serves: binds `daemon`'s socket.
pub struct Control {
    server: Server,
    dirs: Dirs,
    daemon: Daemon,
}

impl Control {
    /// Binds `daemon`'s socket under `dirs.run` (created 0700 when missing).
    pub fn bind(dirs: &Dirs, daemon: Daemon, access: Access) -> anyhow::Result<Control> {
        portdistrict_exitnode::state::private_dir(&dirs.run)
            .with_context(|| format!("creating {} (mode 0700)", dirs.run.display()))?;
        let server = Server::bind(&daemon.socket(dirs), access, &state_dir(dirs))?;
        Ok(Control {
            server,
            dirs: dirs.clone(),
            daemon,
        })
    }

    /// Answers waiting requests (call it from the daemon's loop); true when one of
    /// them changed the daemon's stores. Requests that sign with the identity's seed
    /// are refused as on a machine without it: use [`Control::poll_holding`].
    pub fn poll(&self) -> bool {
        self.poll_holding(None)
    }

    /// [`Control::poll`] in a daemon that holds the identity's seed (`portdistrictd`
    /// on the machine with it): `device roster add` is signed with `seed`.
    pub fn poll_holding(&self, seed: Option<&crate::identity::Seed>) -> bool {
        let secret = crate::node::Secret::Held(seed);
        self.server
            .poll(|r| handle::handle(&self.dirs, self.daemon, secret, r))
    }
}
