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
//! (`portdistrict_wg::config`), and report peers keyed by [`PublicKey`]. The
//! commands NAT traversal needs ([`Dataplane::probe`], [`Dataplane::pin`],
//! [`Dataplane::send_raw`]) and [`Dataplane::handshake_source`] exist over shared
//! memory only: over UAPI they are [`DataplaneError::Unsupported`].

mod shm;
mod uapi;

pub use portdistrict_wg::uapi::SOCKET_DIR;
pub use shm::{apply_change, ShmClient, CONFIRM_WITHIN};
pub use uapi::UapiClient;

pub use portdistrict_wg::config::HandshakeSource;
use portdistrict_wg::config::{ConfigChange, PeerSnapshot};
use portdistrict_wg::PublicKey;
use std::collections::BTreeMap;
use std::net::SocketAddr;
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

    /// Asks the dataplane to send a fresh handshake initiation for `peer` to `to`
    /// from its own UDP socket, with IP TTL / hop limit `ttl` (0: the socket's
    /// default), without changing the peer's endpoint (a NAT-traversal probe; a
    /// response completes the handshake, see [`Dataplane::handshake_source`]).
    fn probe(&mut self, peer: PublicKey, to: SocketAddr, ttl: u8) -> Result<(), DataplaneError>;

    /// Pins `peer`'s endpoint to `to` (set now; roaming no longer moves it), or
    /// unpins it (`None`).
    fn pin(&mut self, peer: PublicKey, to: Option<SocketAddr>) -> Result<(), DataplaneError>;

    /// Holds `peer`'s own handshake initiations (`on`: only probes start handshakes;
    /// the peer's initiations are still answered) or releases them; a pin to an
    /// address releases them too.
    fn hold(&mut self, peer: PublicKey, on: bool) -> Result<(), DataplaneError>;

    /// Asks the dataplane to send `payload` (at most
    /// [`portdistrict_shm::MAX_RAW_PAYLOAD`] bytes) as one UDP datagram to `to` from
    /// its own socket (its listen port), with TTL `ttl` (0: the socket's default).
    fn send_raw(&mut self, to: SocketAddr, ttl: u8, payload: &[u8]) -> Result<(), DataplaneError>;

    /// Where the latest authenticated handshake message from `peer` came from, and
    /// when (as of the statistics the dataplane wrote last, once a second); `None`
    /// when none arrived yet or the peer is unknown.
    fn handshake_source(
        &mut self,
        peer: PublicKey,
    ) -> Result<Option<HandshakeSource>, DataplaneError>;
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
    /// The protocol has no such request (probes, pins, raw datagrams and the
    /// handshake source exist only over shared memory).
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
