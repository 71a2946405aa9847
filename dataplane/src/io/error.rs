//! The error type of the I/O layer.

use std::io;

/// An operating-system operation of the I/O layer failed.
///
/// Syscall failures name the call (and, where it helps, its argument) and keep the
/// kernel's `io::Error` as the source, so `{:#}` prints e.g.
/// "`ioctl(TUNSETIFF)` failed: Operation not permitted (os error 1)".
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A system call failed; `call` names it, `io` is the errno the kernel returned.
    #[error("`{call}` failed")]
    Syscall {
        /// The system call (with its request or option name), e.g. `ioctl(TUNSETIFF)`.
        call: &'static str,
        /// The error the kernel returned.
        #[source]
        io: io::Error,
    },
    /// An interface name cannot be passed to the kernel.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `/dev/net/tun` is missing: the kernel has no TUN support or the device node was
    /// not created (e.g. in a container without `/dev/net/tun` passed in).
    #[error(
        "/dev/net/tun is missing: load the `tun` kernel module or give the container the device"
    )]
    NoTunDevice(#[source] io::Error),
    /// A TUN fd inherited from the parent process is not in the mode this program
    /// reads and writes (`IFF_TUN | IFF_NO_PI`, without `IFF_VNET_HDR`).
    #[error("the inherited TUN fd has flags {flags:#x}, expected IFF_TUN | IFF_NO_PI without IFF_VNET_HDR")]
    WrongTunMode {
        /// The flags `TUNGETIFF` reported.
        flags: u32,
    },
    /// The UDP port is already bound by another socket (another WireGuard interface or
    /// another program); pick a different `ListenPort`.
    #[error("UDP port {port} is already in use ({family}); choose another listen port")]
    PortInUse {
        /// The port that was asked for.
        port: u16,
        /// The address family whose bind failed: "IPv4" or "IPv6".
        family: &'static str,
    },
    /// Neither IPv4 nor IPv6 UDP sockets can be created in this network namespace.
    #[error("neither IPv4 nor IPv6 is available for UDP in this network namespace")]
    NoAddressFamily,
}

impl IoError {
    /// Wraps `io` as a failure of `call`.
    pub(crate) fn syscall(call: &'static str, io: io::Error) -> IoError {
        IoError::Syscall { call, io }
    }
}

/// Converts the return value of a libc call that returns -1 on error into a `Result`,
/// reading `errno` on failure.
pub(crate) fn cvt<T: IsMinusOne>(ret: T) -> io::Result<T> {
    if ret.is_minus_one() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Integer return types of libc calls that signal failure with -1.
pub(crate) trait IsMinusOne: Copy {
    /// Whether the value is -1.
    fn is_minus_one(self) -> bool;
}

impl IsMinusOne for libc::c_int {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

impl IsMinusOne for libc::ssize_t {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}
