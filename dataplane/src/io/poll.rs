//! Readiness waiting: a thin `poll(2)` wrapper and an `eventfd(2)` for wakeups.
//!
//! The driver builds one array of [`PollFd`] (TUN, UDP v4, UDP v6, netlink, the UAPI
//! [`EventFd`]), calls [`poll_fds`] with the time until the next protocol timer, then
//! reads [`PollFd::revents`] of each entry. Nothing here allocates.

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;
use std::{io, mem};

use super::error::{cvt, IoError};

/// One entry of a `poll(2)` set: a borrowed descriptor, the readiness asked for, and
/// after [`poll_fds`] the readiness reported.
///
/// `repr(transparent)` over `libc::pollfd`, so a slice of these is handed to the
/// kernel as is.
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct PollFd<'fd> {
    raw: libc::pollfd,
    _fd: PhantomData<BorrowedFd<'fd>>,
}

impl<'fd> PollFd<'fd> {
    /// Waits for `fd` to become readable (errors and hangups are always reported).
    pub fn readable(fd: BorrowedFd<'fd>) -> PollFd<'fd> {
        Self::new(fd, libc::POLLIN)
    }

    /// Waits for `fd` to become writable (errors and hangups are always reported).
    pub fn writable(fd: BorrowedFd<'fd>) -> PollFd<'fd> {
        Self::new(fd, libc::POLLOUT)
    }

    /// Waits for `fd` to become readable or writable.
    pub fn readable_writable(fd: BorrowedFd<'fd>) -> PollFd<'fd> {
        Self::new(fd, libc::POLLIN | libc::POLLOUT)
    }

    fn new(fd: BorrowedFd<'fd>, events: libc::c_short) -> PollFd<'fd> {
        let raw = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        PollFd {
            raw,
            _fd: PhantomData,
        }
    }

    /// The readiness the last [`poll_fds`] reported for this entry.
    pub fn revents(&self) -> Readiness {
        Readiness(self.raw.revents)
    }
}

/// The readiness bits `poll(2)` reported for one descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness(libc::c_short);

impl Readiness {
    /// Data can be read without blocking (`POLLIN`).
    pub fn is_readable(self) -> bool {
        self.0 & libc::POLLIN != 0
    }
    /// Data can be written without blocking (`POLLOUT`).
    pub fn is_writable(self) -> bool {
        self.0 & libc::POLLOUT != 0
    }
    /// An error is pending (`POLLERR`); for the TUN fd this means the interface was
    /// deleted (a read then fails with `EBADFD`).
    pub fn is_error(self) -> bool {
        self.0 & libc::POLLERR != 0
    }
    /// The other end hung up (`POLLHUP`); for the TUN fd, the interface was deleted.
    pub fn is_hangup(self) -> bool {
        self.0 & libc::POLLHUP != 0
    }
    /// The descriptor is not open (`POLLNVAL`): a bug in the caller.
    pub fn is_invalid(self) -> bool {
        self.0 & libc::POLLNVAL != 0
    }
    /// Anything at all was reported.
    pub fn any(self) -> bool {
        self.0 != 0
    }
}

/// Waits until one of `fds` is ready or `timeout` passes (`None`: wait forever).
///
/// Returns the number of entries with nonzero [`PollFd::revents`]; 0 on timeout and
/// also when a signal interrupted the wait (`EINTR`), so the caller re-checks its
/// signal flags. Timeouts are rounded *up* to whole milliseconds so a timer due in
/// 300 µs does not turn into a busy loop of zero-timeout polls.
pub fn poll_fds(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> Result<usize, IoError> {
    let timeout_ms = timeout.map_or(-1, duration_to_poll_ms);
    // SAFETY: `PollFd` is `repr(transparent)` over `libc::pollfd`, so the slice is a
    // valid array of `fds.len()` pollfds that the kernel may write `revents` into; every
    // fd is borrowed for the lifetime of the slice, so none is closed meanwhile.
    let ret = unsafe {
        libc::poll(
            fds.as_mut_ptr().cast::<libc::pollfd>(),
            fds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    match cvt(ret) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            fds.iter_mut().for_each(|fd| fd.raw.revents = 0);
            Ok(0)
        }
        Err(e) => Err(IoError::syscall("poll", e)),
    }
}

/// Milliseconds for `poll(2)`, rounded up and clamped to `c_int::MAX`.
fn duration_to_poll_ms(d: Duration) -> libc::c_int {
    let ms = d.as_nanos().div_ceil(1_000_000);
    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
}

/// A nonblocking `eventfd(2)`: other threads (the UAPI server) call [`EventFd::signal`]
/// to wake the driver's [`poll_fds`]; the driver then calls [`EventFd::drain`].
///
/// `EventFd` is `Send + Sync`; share it with an `Arc`.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Creates a nonblocking, close-on-exec eventfd with a zero counter.
    pub fn new() -> Result<EventFd, IoError> {
        // SAFETY: eventfd takes no pointers; a nonnegative return is a new fd we own.
        let raw = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })
            .map_err(|e| IoError::syscall("eventfd", e))?;
        // SAFETY: `raw` was just returned by eventfd and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(EventFd { fd })
    }

    /// The descriptor to put in the poll set (readable while signalled).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Wakes the poller. Signals coalesce: many calls before one [`EventFd::drain`]
    /// produce one wakeup.
    pub fn signal(&self) -> Result<(), IoError> {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, which outlives the call, to our fd.
        let ret = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                mem::size_of::<u64>(),
            )
        };
        match cvt(ret) {
            // The counter is at its maximum: the poller is already woken.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(IoError::syscall("write(eventfd)", e)),
            Ok(_) => Ok(()),
        }
    }

    /// Resets the counter; returns how many signals were pending (0 if none).
    pub fn drain(&self) -> Result<u64, IoError> {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into `count`, which is 8 bytes and outlives the call.
        let ret = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut count as *mut u64).cast(),
                mem::size_of::<u64>(),
            )
        };
        match cvt(ret) {
            Ok(_) => Ok(count),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(IoError::syscall("read(eventfd)", e)),
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn timeout_rounds_up_and_clamps() {
        assert_eq!(duration_to_poll_ms(Duration::ZERO), 0);
        assert_eq!(duration_to_poll_ms(Duration::from_micros(300)), 1);
        assert_eq!(duration_to_poll_ms(Duration::from_millis(5)), 5);
        assert_eq!(
            duration_to_poll_ms(Duration::from_secs(u64::MAX)),
            libc::c_int::MAX
        );
    }

    #[test]
    fn eventfd_wakes_poll_and_drains() {
        let ev = EventFd::new().unwrap();
        let mut set = [PollFd::readable(ev.fd())];
        assert_eq!(poll_fds(&mut set, Some(Duration::ZERO)).unwrap(), 0);
        assert!(!set[0].revents().any());

        ev.signal().unwrap();
        ev.signal().unwrap();
        assert_eq!(poll_fds(&mut set, Some(Duration::ZERO)).unwrap(), 1);
        assert!(set[0].revents().is_readable());
        assert_eq!(ev.drain().unwrap(), 2);
        assert_eq!(ev.drain().unwrap(), 0);
        assert_eq!(poll_fds(&mut set, Some(Duration::ZERO)).unwrap(), 0);
    }

    #[test]
    fn eventfd_signal_from_another_thread_ends_infinite_poll() {
        let ev = Arc::new(EventFd::new().unwrap());
        let remote = Arc::clone(&ev);
        let start = Instant::now();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            remote.signal().unwrap();
        });
        let mut set = [PollFd::readable(ev.fd())];
        assert_eq!(poll_fds(&mut set, None).unwrap(), 1);
        assert!(start.elapsed() >= Duration::from_millis(20));
        t.join().unwrap();
    }

    #[test]
    fn poll_times_out() {
        let ev = EventFd::new().unwrap();
        let mut set = [PollFd::readable(ev.fd())];
        let start = Instant::now();
        assert_eq!(
            poll_fds(&mut set, Some(Duration::from_millis(15))).unwrap(),
            0
        );
        assert!(start.elapsed() >= Duration::from_millis(15));
    }
}
