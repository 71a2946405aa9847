//! The TUN device: layer-3 packets between the kernel's routing and the dataplane.
//!
//! The kernel routes a packet to the interface -> [`Tun::read`] returns it (one IP
//! packet per read, no packet-info or virtio-net header) -> the driver encrypts it.
//! Decrypted packets go the other way through [`Tun::write`] and the kernel delivers or
//! forwards them as if they had arrived on the interface.
//!
//! The fd is nonblocking: `read` fails with `WouldBlock` when the queue is empty, and
//! the driver waits for `POLLIN` with [`super::poll_fds`].
//!
//! **Interface deletion.** When the interface is deleted (`ip link del IFNAME`), a read
//! on the fd fails with `EBADFD` (errno 77) and `poll` reports `POLLERR`/`POLLHUP`
//! ([`Tun::is_gone`] recognises that error). This is the *only* reliable "interface
//! gone, exit" signal: moving the interface to another network namespace makes the
//! netlink monitor of this namespace report `Deleted`, yet the fd keeps working.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::error::{cvt, IoError};

/// The TUN mode this program uses; checked on an inherited fd.
const TUN_MODE: libc::c_int = libc::IFF_TUN | libc::IFF_NO_PI;
/// Flags that change the framing of what read/write carry.
const TUN_FRAMING: libc::c_int =
    libc::IFF_TUN | libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// An open TUN interface (`IFF_TUN | IFF_NO_PI`, nonblocking).
///
/// The interface lives as long as this fd (and any inherited copy) stays open, unless
/// it is deleted explicitly. `name` and `ifindex` are the values at open time.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    ifindex: u32,
    offload: TunOffload,
}

/// What a TUN fd opened with [`Tun::create_offloaded`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunOffload {
    /// Every read and write starts with a 10-byte `virtio_net_hdr`.
    pub vnet_hdr: bool,
    /// TCP segmentation offload (reads may be 64 KiB TCP super-packets).
    pub tso: bool,
    /// UDP segmentation offload (reads may be UDP super-packets).
    pub uso: bool,
}

impl Tun {
    /// Opens `/dev/net/tun` and creates (or attaches to a persistent) TUN interface
    /// `name` with `IFF_TUN | IFF_NO_PI`; the fd is nonblocking and close-on-exec.
    ///
    /// An empty `name` lets the kernel choose (`tunN`). The name the kernel used and the
    /// interface index are read back. Needs `CAP_NET_ADMIN`.
    pub fn create(name: &str) -> Result<Tun, IoError> {
        Self::open(name, TUN_MODE)
    }

    /// Like [`Tun::create`], with `IFF_VNET_HDR` and `TUNSETOFFLOAD` asking for
    /// checksum offload, TSO4/6 (with ECN) and USO4/6; USO is dropped on kernels that
    /// refuse it, and all offloads if `TUNSETOFFLOAD` fails (the virtio-net header stays:
    /// reads then carry `GSO_NONE`). See [`Tun::offload`] for what was granted.
    pub fn create_offloaded(name: &str) -> Result<Tun, IoError> {
        let mut tun = Self::open(name, TUN_MODE | libc::IFF_VNET_HDR)?;
        let base = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
        let uso = libc::TUN_F_USO4 | libc::TUN_F_USO6;
        tun.offload.vnet_hdr = true;
        if tun.set_offload(base | uso).is_ok() {
            tun.offload.tso = true;
            tun.offload.uso = true;
        } else if tun.set_offload(base).is_ok() {
            tun.offload.tso = true;
        }
        Ok(tun)
    }

    fn set_offload(&self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of flags).
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        })?;
        Ok(())
    }

    /// The offloads this fd was opened with.
    pub fn offload(&self) -> TunOffload {
        self.offload
    }

    fn open(name: &str, mode: libc::c_int) -> Result<Tun, IoError> {
        let mut req = ifreq_with_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => IoError::NoTunDevice(e),
                _ => IoError::syscall("open(/dev/net/tun)", e),
            })?;
        let fd = OwnedFd::from(file);
        req.ifr_ifru.ifru_flags = mode as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one, valid and
        // exclusively borrowed for the call, and `fd` is an open /dev/net/tun.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) })
            .map_err(|e| IoError::syscall("ioctl(TUNSETIFF)", e))?;
        Self::from_configured_fd(fd)
    }

    /// Wraps a TUN fd inherited from the parent process (daemonization passes it on).
    ///
    /// Reads the name with `TUNGETIFF`, checks that the fd is in `IFF_TUN | IFF_NO_PI`
    /// mode, makes it nonblocking, and looks the index up in this network namespace.
    pub fn from_fd(fd: OwnedFd) -> Result<Tun, IoError> {
        set_nonblocking(fd.as_fd())?;
        Self::from_configured_fd(fd)
    }

    fn from_configured_fd(fd: OwnedFd) -> Result<Tun, IoError> {
        let (name, flags) = tun_get_iff(fd.as_fd())?;
        let framing = flags & TUN_FRAMING;
        if framing != TUN_MODE && framing != TUN_MODE | libc::IFF_VNET_HDR {
            return Err(IoError::WrongTunMode {
                flags: flags as u32,
            });
        }
        let ifindex = if_index(&name)?;
        let offload = TunOffload {
            vnet_hdr: framing & libc::IFF_VNET_HDR != 0,
            ..TunOffload::default()
        };
        Ok(Tun {
            fd,
            name,
            ifindex,
            offload,
        })
    }

    /// The interface name (as the kernel returned it at open time).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index (at open time, in the namespace the process started in).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Reads one IP packet into `buf`; `WouldBlock` when none is queued. A packet larger
    /// than `buf` is truncated, so pass a buffer of at least the MTU.
    ///
    /// Fails with `EBADFD` once the interface has been deleted (see [`Tun::is_gone`]).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads at most `buf.len()` bytes into `buf`, which is valid for writes
        // of that length for the duration of the call.
        let n =
            cvt(unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })?;
        Ok(n as usize)
    }

    /// Writes one IP packet (IPv4 or IPv6, told apart by its version nibble) to the
    /// kernel. `WouldBlock` is not expected (TUN writes do not block); `EINVAL` means
    /// the packet is malformed, `EBADFD` that the interface is gone.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: writes `buf.len()` bytes from `buf`, valid for reads of that length.
        let n = cvt(unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })?;
        Ok(n as usize)
    }

    /// Whether `err` (from [`Tun::read`] or [`Tun::write`]) means the interface was
    /// deleted and the driver should exit.
    pub fn is_gone(err: &io::Error) -> bool {
        err.raw_os_error() == Some(libc::EBADFD)
    }

    /// The current MTU, asked by name with `SIOCGIFMTU`. Works while the interface is
    /// in the process's network namespace (after a move to another namespace the name
    /// is not found there; keep the last value, the netlink monitor reports changes).
    pub fn mtu(&self) -> Result<u32, IoError> {
        let mut req = ifreq_with_name(&self.name)?;
        ifreq_ioctl(libc::SIOCGIFMTU, "ioctl(SIOCGIFMTU)", &mut req)?;
        // SAFETY: SIOCGIFMTU succeeded, so the kernel filled the `ifru_mtu` member.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        Ok(mtu as u32)
    }

    /// Sets the MTU by name with `SIOCSIFMTU` (wireguard-go gives new interfaces 1420).
    pub fn set_mtu(&self, mtu: u32) -> Result<(), IoError> {
        let mut req = ifreq_with_name(&self.name)?;
        req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        ifreq_ioctl(libc::SIOCSIFMTU, "ioctl(SIOCSIFMTU)", &mut req)
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A zeroed `ifreq` carrying `name`; rejects names the kernel could not take.
pub(crate) fn ifreq_with_name(name: &str) -> Result<libc::ifreq, IoError> {
    let invalid = |reason| IoError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(invalid("longer than 15 bytes"));
    }
    if name
        .bytes()
        .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
    {
        return Err(invalid("contains a NUL byte, '/' or whitespace"));
    }
    if name == "." || name == ".." {
        return Err(invalid("'.' and '..' are not interface names"));
    }
    // SAFETY: `ifreq` is plain old data (integers, arrays, a union of those and a raw
    // pointer); all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// `TUNGETIFF`: the interface name and TUN flags of a TUN fd.
fn tun_get_iff(fd: BorrowedFd<'_>) -> Result<(String, libc::c_int), IoError> {
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, which is valid and
    // exclusively borrowed for the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req) })
        .map_err(|e| IoError::syscall("ioctl(TUNGETIFF)", e))?;
    // SAFETY: TUNGETIFF succeeded, so the kernel filled `ifru_flags`.
    let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags }) & 0xffff;
    Ok((ifreq_name(&req), flags))
}

/// The NUL-terminated name in `req.ifr_name` (the kernel always terminates it).
fn ifreq_name(req: &libc::ifreq) -> String {
    let bytes: [u8; libc::IFNAMSIZ] = req.ifr_name.map(|c| c as u8);
    CStr::from_bytes_until_nul(&bytes)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned())
}

/// The index of interface `name` in this network namespace (`SIOCGIFINDEX`).
pub(crate) fn if_index(name: &str) -> Result<u32, IoError> {
    let mut req = ifreq_with_name(name)?;
    ifreq_ioctl(libc::SIOCGIFINDEX, "ioctl(SIOCGIFINDEX)", &mut req)?;
    // SAFETY: SIOCGIFINDEX succeeded, so the kernel filled `ifru_ifindex`.
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    Ok(index as u32)
}

/// Runs an interface ioctl that takes a `struct ifreq` on a throwaway datagram socket.
pub(crate) fn ifreq_ioctl(
    request: libc::Ioctl,
    call: &'static str,
    req: &mut libc::ifreq,
) -> Result<(), IoError> {
    // SAFETY: socket takes no pointers; a nonnegative return is a new fd we own.
    let raw = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
        .or_else(|_| {
            // SAFETY: as above; IPv6-only hosts have no AF_INET sockets.
            cvt(unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
        })
        .map_err(|e| IoError::syscall("socket(for interface ioctl)", e))?;
    // SAFETY: `raw` was just returned by socket and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `request` is an interface ioctl that reads and writes a `struct ifreq`;
    // `req` is one, valid and exclusively borrowed for the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) })
        .map_err(|e| IoError::syscall(call, e))?;
    Ok(())
}

/// Sets `O_NONBLOCK` on `fd`, keeping its other status flags.
fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), IoError> {
    // SAFETY: F_GETFL takes no argument and only reads the fd's status flags.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
        .map_err(|e| IoError::syscall("fcntl(F_GETFL)", e))?;
    // SAFETY: F_SETFL takes an int of status flags; no pointers are involved.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })
        .map_err(|e| IoError::syscall("fcntl(F_SETFL)", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::poll::{poll_fds, PollFd};
    use crate::io::testutil::{in_fresh_netns, ip};
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    #[test]
    fn rejects_bad_names() {
        for name in ["0123456789abcdef", "a/b", "a b", "a\0b", ".."] {
            assert!(
                matches!(Tun::create(name), Err(IoError::InvalidName { .. })),
                "{name:?} accepted"
            );
        }
    }

    #[test]
    fn create_reads_back_name_index_and_mtu() {
        in_fresh_netns(|| {
            let tun = Tun::create("pdtun0").unwrap();
            assert_eq!(tun.name(), "pdtun0");
            assert_eq!(tun.ifindex(), if_index("pdtun0").unwrap());
            assert!(tun.ifindex() > 1, "lo is 1, the TUN comes later");
            assert_eq!(tun.mtu().unwrap(), 1500);
            ip(&["link", "set", "pdtun0", "mtu", "1380"]);
            assert_eq!(tun.mtu().unwrap(), 1380);
        });
    }

    #[test]
    fn kernel_chooses_a_name_when_empty() {
        in_fresh_netns(|| {
            let tun = Tun::create("").unwrap();
            assert!(tun.name().starts_with("tun"), "{}", tun.name());
        });
    }

    #[test]
    fn from_fd_rewraps_an_inherited_fd() {
        in_fresh_netns(|| {
            let tun = Tun::create("pdtun1").unwrap();
            let copy = tun.fd.try_clone().unwrap();
            let again = Tun::from_fd(copy).unwrap();
            assert_eq!(again.name(), "pdtun1");
            assert_eq!(again.ifindex(), tun.ifindex());
        });
    }

    #[test]
    fn from_fd_rejects_a_non_tun_fd() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = Tun::from_fd(OwnedFd::from(file)).unwrap_err();
        assert!(
            matches!(
                err,
                IoError::Syscall {
                    call: "ioctl(TUNGETIFF)",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn empty_queue_reads_would_block() {
        in_fresh_netns(|| {
            let tun = Tun::create("pdtun2").unwrap();
            let mut buf = [0u8; 2048];
            let err = tun.read(&mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        });
    }

    #[test]
    fn icmp_echo_round_trip_and_deletion_is_ebadfd() {
        in_fresh_netns(|| {
            let tun = Tun::create("pdtun3").unwrap();
            ip(&["addr", "add", "10.77.0.1/24", "dev", "pdtun3"]);
            ip(&["link", "set", "pdtun3", "up"]);
            let request = icmp_echo_request(
                Ipv4Addr::new(10, 77, 0, 2),
                Ipv4Addr::new(10, 77, 0, 1),
                0x1234,
            );
            assert_eq!(tun.write(&request).unwrap(), request.len());
            let reply = read_ipv4(&tun, Duration::from_secs(5));
            assert_eq!(&reply[12..16], &[10, 77, 0, 1], "reply source");
            assert_eq!(&reply[16..20], &[10, 77, 0, 2], "reply destination");
            assert_eq!(reply[20], 0, "ICMP echo reply type");
            assert_eq!(&reply[24..26], &0x1234u16.to_be_bytes(), "echo id");
            assert_eq!(&reply[28..], &request[28..], "echo payload");

            ip(&["link", "del", "pdtun3"]);
            let mut set = [PollFd::readable(tun.as_fd())];
            poll_fds(&mut set, Some(Duration::from_secs(5))).unwrap();
            let ready = set[0].revents();
            assert!(ready.is_error() || ready.is_hangup(), "{ready:?}");
            let err = tun.read(&mut [0u8; 2048]).unwrap_err();
            assert!(Tun::is_gone(&err), "{err:?}");
        });
    }

    /// Reads packets until an IPv4 one arrives (IPv6 router solicitations may come first).
    fn read_ipv4(tun: &Tun, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no IPv4 packet from the TUN within {timeout:?}"
            );
            let mut set = [PollFd::readable(tun.as_fd())];
            poll_fds(&mut set, Some(left)).unwrap();
            match tun.read(&mut buf) {
                Ok(n) if n > 0 && buf[0] >> 4 == 4 => return buf[..n].to_vec(),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("TUN read failed: {e}"),
            }
        }
    }

    /// An IPv4 ICMP echo request with a 16-byte payload and valid checksums.
    fn icmp_echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
        let mut icmp = vec![8, 0, 0, 0];
        icmp.extend_from_slice(&id.to_be_bytes());
        icmp.extend_from_slice(&1u16.to_be_bytes());
        icmp.extend_from_slice(b"portdistrict-tun");
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let total = (20 + icmp.len()) as u16;
        let mut pkt = vec![0x45, 0];
        pkt.extend_from_slice(&total.to_be_bytes());
        pkt.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
        pkt.extend_from_slice(&src.octets());
        pkt.extend_from_slice(&dst.octets());
        let sum = checksum(&pkt);
        pkt[10..12].copy_from_slice(&sum.to_be_bytes());
        pkt.extend_from_slice(&icmp);
        pkt
    }

    fn checksum(data: &[u8]) -> u16 {
        let mut sum: u32 = data
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
}
