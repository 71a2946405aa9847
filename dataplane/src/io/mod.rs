//! The operating-system side of the dataplane: TUN, UDP sockets, the link monitor and
//! readiness waiting. It knows nothing of WireGuard; the driver joins it to the protocol.
//!
//! What flows through, in order:
//!
//! - **Outbound.** The kernel routes a packet to the interface -> [`Tun::read`] ->
//!   (driver: cryptokey routing, encryption) -> [`UdpSockets::send`] to the peer's
//!   endpoint, from the peer's sticky [`SourceAddr`].
//! - **Inbound.** [`UdpSockets::recv`] yields the datagram, its sender and the local
//!   address it arrived on -> (driver: decryption, AllowedIPs check, endpoint and
//!   source update) -> [`Tun::write`] hands the inner packet to the kernel.
//! - **Events.** [`LinkMonitor::drain`] reports MTU changes, up/down and the interface
//!   leaving the namespace; [`EventFd`] wakes the loop for UAPI requests.
//! - **Waiting.** [`poll_fds`] over the TUN fd, the UDP sockets, the netlink socket
//!   and the eventfd, with the time to the next protocol timer as timeout.
//!
//! Exit conditions: a TUN read failing with `EBADFD` ([`Tun::is_gone`], also seen as
//! `POLLERR`/`POLLHUP`) means the interface was deleted. [`LinkEvent::Deleted`] alone
//! does not: it also fires when the interface moves to another namespace, where the
//! TUN fd keeps working.
//!
//! Every fd is nonblocking and close-on-exec; every call that can fail names its
//! syscall in [`IoError`].

mod error;
mod msg;
mod netlink;
mod poll;
mod tun;
mod udp;
pub mod uring;

#[cfg(test)]
mod testutil;

pub use error::IoError;
pub use msg::SourceAddr;
pub use netlink::{LinkEvent, LinkMonitor};
pub use poll::{poll_fds, EventFd, PollFd, Readiness};
pub(crate) use tun::{ifreq_ioctl, ifreq_with_name};
pub use tun::{Tun, TunOffload};
pub use udp::{Received, UdpSockets};
pub use uring::{recvmmsg_batch, Completion, Reactor, ReactorConfig, RecvBatch};
