//! The crate's error type.

use crate::layout::{MAX_ALLOWED, MAX_RAW_PAYLOAD};

/// Why the region cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// Opening, sizing or mapping the file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The region's content is not valid.
    #[error("shared-memory region is corrupt: {0}")]
    Corrupt(String),
    /// The file is smaller than the region (someone truncated it): touching the
    /// mapping beyond its end would fault, so nothing is read or written.
    #[error("the shared-memory file shrank to {size} bytes; the region needs {need}")]
    Shrunk {
        /// The file's size now.
        size: u64,
        /// The region's size.
        need: usize,
    },
    /// The header's magic changed: the file was re-initialised or overwritten in place.
    #[error("the shared-memory region was overwritten in place (magic {0:#x})")]
    Reset(u64),
    /// The producer kept writing through every attempt.
    #[error("shared-memory region kept changing while being read")]
    Busy,
    /// More peers than the region holds.
    #[error("{0} peers do not fit a region made for {1}")]
    TooManyPeers(usize, u32),
    /// A peer with more AllowedIPs than an entry holds.
    #[error("a peer has {0} AllowedIPs; the region holds {MAX_ALLOWED} per peer")]
    TooManyAllowed(usize),
    /// The command ring is full.
    #[error("the command ring is full")]
    RingFull,
    /// A raw datagram ([`crate::Command::Send`]) longer than the ring carries.
    #[error("a raw datagram carries at most {MAX_RAW_PAYLOAD} bytes; this one has {0}")]
    PayloadTooLong(usize),
    /// A command's destination cannot be sent to (port 0).
    #[error("{0} cannot be a command's destination (port 0)")]
    InvalidDestination(std::net::SocketAddr),
}
