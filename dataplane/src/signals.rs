//! SIGTERM and SIGINT as a readable file descriptor (`signalfd(2)`), so the event
//! loop sees them like any other input and exits between two packets.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

/// A signalfd for SIGTERM and SIGINT. Create it before spawning threads: the blocked
/// mask is inherited, so no thread receives the signals asynchronously.
pub struct TermSignals {
    fd: OwnedFd,
}

impl TermSignals {
    /// Blocks SIGTERM/SIGINT for this thread (and threads it spawns later) and opens
    /// a nonblocking signalfd for them.
    pub fn new() -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it fully.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, writable sigset_t.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: `set` is initialised; -1 asks for a new fd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by signalfd and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// The fd to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// True when a termination signal is pending (consumes it).
    pub fn pending(&self) -> bool {
        let mut info = [0u8; 128];
        // SAFETY: reading into a 128-byte buffer, the size of signalfd_siginfo.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                info.as_mut_ptr().cast(),
                info.len(),
            )
        };
        n > 0
    }
}
