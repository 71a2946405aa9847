//! One client of the dataplane for everything in control that programs a tunnel
//! (portdistrictd, `exit serve`, `use`, `tunnel`): the [`Dataplane`] trait, with two
//! implementations chosen once per interface:
//!
//! - [`ShmClient`]: the shared-memory region of a dataplane we started with `--shm`
//!   (the design's path): the configuration is written to the region and the client
//!   waits (bounded) until the dataplane reports its generation applied;
//! - [`UapiClient`]: the WireGuard UAPI socket `SOCKET_DIR/IFNAME.sock`, for an
//!   interface we did not start with a region (or from a process that is not the
//!   region's producer, such as the CLI).
//!
//! Both take the same [`ConfigChange`] values as the dataplane's device applies
//! (`portdistrict_wg::config`), and report peers keyed by [`PublicKey`].

mod shm;
mod uapi;

pub use portdistrict_wg::uapi::SOCKET_DIR;
pub use shm::{apply_change, ShmClient, CONFIRM_WITHIN};
pub use uapi::UapiClient;

use portdistrict_wg::config::{ConfigChange, PeerSnapshot};
use portdistrict_wg::PublicKey;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// What a client can do with a running dataplane.
pub trait Dataplane {
    /// The interface it programs.
    fn interface(&self) -> &str;

    /// Applies `change` (with UAPI `set` semantics: what it leaves `None` stays) and
    /// returns once the dataplane has taken it.
    fn apply(&mut self, change: &ConfigChange) -> Result<(), DataplaneError>;

    /// The configured peers with their counters and last handshake, by key.
    fn peers(&mut self) -> Result<BTreeMap<PublicKey, PeerSnapshot>, DataplaneError>;

    /// Asks the dataplane to start a handshake with `peer` now.
    fn request_handshake(&mut self, peer: PublicKey) -> Result<(), DataplaneError>;
}

/// Why the dataplane could not be programmed or read.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The UAPI socket cannot be reached.
    #[error("connecting to {} (is the dataplane running?)", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Talking over the UAPI socket failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The UAPI answer is not UTF-8.
    #[error("the dataplane's answer is not text")]
    NotText,
    /// The dataplane answered a `set` with a non-zero errno.
    #[error(
        "{ifname}: the dataplane refused the configuration (errno {errno}: {})",
        std::io::Error::from_raw_os_error(-errno)
    )]
    Refused {
        /// The interface.
        ifname: String,
        /// The (negative) errno.
        errno: i32,
    },
    /// An answer ended without its `errno=` line, or another request failed.
    #[error("{ifname}: {request} failed ({errno:?}): {answer:?}")]
    Failed {
        /// The interface.
        ifname: String,
        /// `set`, `stats`.
        request: &'static str,
        /// The errno answered, if any.
        errno: Option<i32>,
        /// The answer (shortened).
        answer: String,
    },
    /// The answer to `get=1` does not parse.
    #[error("{ifname}: the dataplane's get answer")]
    Get {
        /// The interface.
        ifname: String,
        /// What is wrong with it.
        #[source]
        source: portdistrict_wg::uapi::GetError,
    },
    /// The shared-memory region refused an access.
    #[error("{ifname}: shared memory")]
    Shm {
        /// The interface.
        ifname: String,
        /// Why.
        #[source]
        source: portdistrict_shm::ShmError,
    },
    /// The dataplane did not report the configuration applied in time.
    #[error(
        "{ifname}: the dataplane did not report configuration {generation} applied within \
         {waited:?} (it reports {reported})"
    )]
    NotApplied {
        /// The interface.
        ifname: String,
        /// The generation written.
        generation: u64,
        /// The generation the region reports applied.
        reported: u64,
        /// How long the client waited.
        waited: Duration,
    },
    /// The protocol has no such request.
    #[error("{ifname}: {what} cannot be asked over {protocol}")]
    Unsupported {
        /// The interface.
        ifname: String,
        /// The request.
        what: &'static str,
        /// The protocol.
        protocol: &'static str,
    },
}

/// The client for `ifname`: its shared-memory region if `region` is one, else its
/// UAPI socket. Chosen once; the caller keeps it for the interface's lifetime.
pub fn client(ifname: &str, region: Option<portdistrict_shm::Region>) -> Box<dyn Dataplane + Send> {
    match region {
        Some(r) => Box::new(ShmClient::new(ifname, r)),
        None => Box::new(UapiClient::new(ifname)),
    }
}
