//! The UAPI unix socket `/var/run/wireguard/IFNAME.sock`.
//!
//! The socket is created under umask 0077 and then set to 0600, in a directory that
//! is not writable by others, so no other user can connect to it at any moment.
//!
//! One thread serves every client from a `poll(2)` loop (requests `get=1`, `set=1`,
//! and our own `stats=1`). It cuts each request out of the client's bytes with a
//! [`Framer`] and parses it completely before anything happens, so a request that is
//! malformed, cut short, too long or late is answered with an errno and changes
//! nothing. A parsed request goes to the event loop over a channel, waking it through
//! an eventfd; the loop owns the device, applies it and sends the reply text back.
//!
//! Limits ([`Limits`]): lines of at most 64 KiB, requests of at most 64 MiB (and
//! 128 MiB of unfinished requests across all clients), 30 s for a request to arrive
//! completely (and for its reply to be read), at most 16 clients at once. A client
//! beyond the 16th takes the place of the one that has been idle longest (connected
//! with no request begun), or is closed at once when every client is busy.

use crate::io::{poll_fds, EventFd, PollFd, Readiness};
use anyhow::Context as _;
use portdistrict_wg::uapi::{self, FrameError, Framer, Request, SOCKET_DIR};
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::fd::AsFd as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A parsed request waiting for the event loop.
pub enum Call {
    /// `get=1` or `set=1`.
    Uapi(Request),
    /// `stats=1`: the drop counters.
    Stats,
}

/// What the event loop is asked, and the channel its answer goes back on.
pub enum Pending {
    /// A UAPI request.
    Uapi {
        /// What was asked.
        call: Call,
        /// Where the complete reply (ending in `errno=N\n\n`) goes.
        reply: mpsc::SyncSender<String>,
    },
    /// A scrape of the metrics endpoint ([`crate::metrics`]): the counters go back
    /// as they are, not as text.
    Metrics(mpsc::SyncSender<crate::metrics::Snapshot>),
}

/// What the socket server allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest line of a request, in bytes.
    pub line_max: usize,
    /// Largest request, in bytes.
    pub request_max: usize,
    /// Bytes of unfinished requests held across all clients.
    pub buffered_max: usize,
    /// Clients connected at once.
    pub clients: usize,
    /// Time for a request to arrive completely (counted from the connection or the
    /// previous reply), and for its reply to be read.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            line_max: uapi::LINE_MAX,
            request_max: uapi::REQUEST_MAX,
            buffered_max: 2 * uapi::REQUEST_MAX,
            clients: 16,
            timeout: Duration::from_secs(30),
        }
    }
}

/// The socket's path for `ifname`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// Binds the UAPI socket, refusing if another process already serves it and
/// removing a stale file otherwise.
pub fn bind(ifname: &str) -> anyhow::Result<UnixListener> {
    bind_in(Path::new(SOCKET_DIR), ifname)
}

/// The process's file creation mask, set for the guard's lifetime.
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Self {
        // SAFETY: umask only swaps the process's file creation mask; it cannot fail.
        Self(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as in `Umask::set`.
        unsafe { libc::umask(self.0) };
    }
}

/// [`bind`] with the socket directory `dir`.
fn bind_in(dir: &Path, ifname: &str) -> anyhow::Result<UnixListener> {
    // Everything created here (the directory, the socket) is created without
    // group and other permissions: the socket is never connectable by another
    // user, not even between bind(2) and chmod(2).
    let _umask = Umask::set(0o077);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_dir() || (meta.uid() != euid && meta.uid() != 0) {
        anyhow::bail!(
            "{} is not a directory owned by root or by this user (uid {}): refusing to put the UAPI socket there",
            dir.display(),
            meta.uid()
        );
    }
    // As wireguard-go: others may list the sockets, never create or remove them.
    if meta.mode() & 0o7777 != 0o755 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 0755 {}", dir.display()))?;
    }
    let path = dir.join(format!("{ifname}.sock"));
    if UnixStream::connect(&path).is_ok() {
        anyhow::bail!(
            "{} is in use: another process serves interface {ifname}",
            path.display()
        );
    }
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Starts the server thread with the default [`Limits`].
pub fn spawn(
    listener: UnixListener,
    tx: mpsc::Sender<Pending>,
    wake: Arc<EventFd>,
) -> std::io::Result<()> {
    spawn_with(listener, tx, wake, Limits::default())
}

/// Starts the server thread with `limits`.
pub fn spawn_with(
    listener: UnixListener,
    tx: mpsc::Sender<Pending>,
    wake: Arc<EventFd>,
    limits: Limits,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut server = Server {
        listener,
        calls: Calls { tx, wake },
        limits,
        conns: Vec::new(),
        chunk: vec![0; limits.line_max.clamp(4096, 64 * 1024)],
        accept_paused_until: None,
        refusals_logged: None,
    };
    std::thread::Builder::new()
        .name("uapi".into())
        .spawn(move || server.run())?;
    Ok(())
}

/// The way to the event loop.
struct Calls {
    tx: mpsc::Sender<Pending>,
    wake: Arc<EventFd>,
}

impl Calls {
    /// The reply to one complete request; `None` closes the connection without one.
    fn answer(&self, text: &str) -> Option<String> {
        let call = if text.starts_with("stats=1\n") {
            Ok(Call::Stats)
        } else {
            uapi::parse_request_with(text, &scope_id).map(Call::Uapi)
        };
        match call {
            Err(e) if e.closes_connection() => {
                tracing::warn!("UAPI request refused, closing: {e}");
                None
            }
            Err(e) => {
                tracing::warn!("UAPI request refused: {e}");
                Some(errno_reply(e.errno()))
            }
            Ok(call) => {
                let (rtx, rrx) = mpsc::sync_channel(1);
                self.tx.send(Pending::Uapi { call, reply: rtx }).ok()?;
                self.wake.signal().ok()?;
                rrx.recv().ok()
            }
        }
    }
}

fn errno_reply(errno: i32) -> String {
    let mut out = String::new();
    uapi::format_errno(&mut out, errno);
    out
}

/// Interface index of `name` (for link-local endpoints such as `[fe80::1%eth0]:51820`).
fn scope_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// One client.
struct Conn {
    stream: UnixStream,
    framer: Framer,
    /// The reply being written, and how much of it is written.
    out: Vec<u8>,
    sent: usize,
    /// When the wait for the current request (or for the client to read the reply)
    /// began: the deadline is this plus the timeout.
    since: Instant,
    /// The last time a byte arrived (or the connection was accepted).
    last: Instant,
    /// The client closed its writing half.
    eof: bool,
    /// Close once `out` is written (after an error).
    close_when_sent: bool,
    dead: bool,
}

impl Conn {
    fn new(stream: UnixStream, now: Instant, limits: &Limits) -> Self {
        Self {
            stream,
            framer: Framer::new(limits.line_max, limits.request_max),
            out: Vec::new(),
            sent: 0,
            since: now,
            last: now,
            eof: false,
            close_when_sent: false,
            dead: false,
        }
    }

    fn writing(&self) -> bool {
        self.sent < self.out.len()
    }

    /// Connected, nothing of a request received, nothing to write: may make room.
    fn idle(&self) -> bool {
        !self.dead && !self.eof && !self.writing() && self.framer.buffered() == 0
    }

    /// Writes what the socket takes of `out`; when all of it is written, the
    /// connection is closed if it was to be, or waits for the next request.
    fn flush(&mut self, now: Instant) {
        while self.writing() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        self.out = Vec::new();
        self.sent = 0;
        self.since = now;
        if self.close_when_sent {
            self.close();
        }
    }

    /// Answers `e`'s errno and closes the connection (what follows in its input
    /// cannot be trusted to start a request).
    fn fail(&mut self, e: &FrameError, now: Instant) {
        tracing::warn!("UAPI request refused, nothing applied, closing the connection: {e}");
        self.framer = Framer::new(0, 0);
        self.out = errno_reply(e.errno()).into_bytes();
        self.sent = 0;
        self.since = now;
        self.close_when_sent = true;
        self.flush(now);
    }

    /// Closes after reading (and dropping) what the client already sent, up to
    /// 1 MiB, so that it sees the end of the reply rather than a reset.
    fn close(&mut self) {
        let mut sink = [0u8; 16 * 1024];
        for _ in 0..64 {
            match self.stream.read(&mut sink) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        self.dead = true;
    }

    /// Answers the complete requests received, one at a time: stops while a reply
    /// is being written, and at the end of the input.
    fn serve(&mut self, calls: &Calls) {
        while !self.dead && !self.writing() {
            match self.framer.next_request() {
                Ok(Some(text)) => match calls.answer(&text) {
                    Some(reply) => {
                        let now = Instant::now();
                        self.out = reply.into_bytes();
                        self.sent = 0;
                        self.since = now;
                        self.flush(now);
                    }
                    None => self.dead = true,
                },
                Ok(None) => {
                    if self.eof {
                        match self.framer.finish() {
                            Ok(()) => self.dead = true,
                            Err(e) => self.fail(&e, Instant::now()),
                        }
                    }
                    return;
                }
                Err(e) => {
                    self.fail(&e, Instant::now());
                    return;
                }
            }
        }
    }

    /// The deadline passed: a begun request is refused, an idle client or one that
    /// does not read its reply is dropped.
    fn time_out(&mut self, limits: &Limits, now: Instant) {
        if self.writing() || self.framer.buffered() == 0 {
            self.dead = true;
        } else {
            let secs = limits.timeout.as_secs().max(1);
            self.fail(&FrameError::TimedOut { secs }, now);
            // A client that does not take even the errno is dropped at the next
            // deadline.
        }
    }
}

struct Server {
    listener: UnixListener,
    calls: Calls,
    limits: Limits,
    conns: Vec<Conn>,
    /// One read's worth of bytes.
    chunk: Vec<u8>,
    /// After an accept error (e.g. out of descriptors), the listener rests a while.
    accept_paused_until: Option<Instant>,
    /// When a refused client was last logged (at most one line every 10 s).
    refusals_logged: Option<Instant>,
}

impl Server {
    fn run(&mut self) {
        loop {
            let now = Instant::now();
            let timeout = self.limits.timeout;
            for c in &mut self.conns {
                if now >= c.since + timeout {
                    c.time_out(&self.limits, now);
                }
            }
            self.conns.retain(|c| !c.dead);
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
            }
            let ready = match self.wait(now) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("UAPI: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let now = Instant::now();
            for i in 0..self.conns.len() {
                if ready[i + 1].any() {
                    self.on_ready(i, now);
                }
            }
            self.conns.retain(|c| !c.dead);
            if ready[0].is_readable() {
                self.accept(now);
            }
        }
    }

    /// Polls the listener (unless it rests) and every client; returns their
    /// readiness, the listener's first.
    fn wait(&self, now: Instant) -> Result<Vec<Readiness>, crate::io::IoError> {
        let mut fds = Vec::with_capacity(self.conns.len() + 1);
        let mut wait = self.accept_paused_until.map(|t| t - now);
        let listening = self.accept_paused_until.is_none();
        if listening {
            fds.push(PollFd::readable(self.listener.as_fd()));
        }
        for c in &self.conns {
            let fd = c.stream.as_fd();
            fds.push(if c.writing() {
                PollFd::writable(fd)
            } else {
                PollFd::readable(fd)
            });
            let left = (c.since + self.limits.timeout).saturating_duration_since(now);
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        poll_fds(&mut fds, wait)?;
        let mut ready: Vec<Readiness> = fds.iter().map(PollFd::revents).collect();
        if !listening {
            ready.insert(0, Readiness::default());
        }
        Ok(ready)
    }

    fn on_ready(&mut self, i: usize, now: Instant) {
        let buffered: usize = self.conns.iter().map(|c| c.framer.buffered()).sum();
        let c = &mut self.conns[i];
        if c.writing() {
            c.flush(now);
            if !c.dead && !c.writing() {
                c.serve(&self.calls);
            }
            return;
        }
        match c.stream.read(&mut self.chunk) {
            Ok(0) => c.eof = true,
            Ok(n) => {
                c.last = now;
                if buffered + n > self.limits.buffered_max {
                    let max = self.limits.buffered_max;
                    c.fail(&FrameError::Busy { max }, now);
                    return;
                }
                c.framer.push(&self.chunk[..n]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return,
            Err(_) => {
                c.dead = true;
                return;
            }
        }
        c.serve(&self.calls);
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("UAPI: accepting a client: {e}");
                    self.accept_paused_until = Some(now + Duration::from_millis(100));
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.conns.len() >= self.limits.clients {
                let idlest = (0..self.conns.len())
                    .filter(|&i| self.conns[i].idle())
                    .min_by_key(|&i| self.conns[i].last);
                match idlest {
                    Some(i) => {
                        self.conns.swap_remove(i);
                    }
                    None => {
                        if self
                            .refusals_logged
                            .is_none_or(|t| now >= t + Duration::from_secs(10))
                        {
                            tracing::warn!(
                                "UAPI: {} clients are busy, closing new ones until one is done",
                                self.limits.clients
                            );
                            self.refusals_logged = Some(now);
                        }
                        continue;
                    }
                }
            }
            self.conns.push(Conn::new(stream, now, &self.limits));
        }
    }
}

/// The render function of the endpoint: a snapshot from the event loop (over `tx`,
/// woken through `wake`), rendered.
pub fn metrics_scraper(
    tx: mpsc::Sender<Pending>,
    wake: Arc<EventFd>,
) -> Arc<portdistrict_metrics::http::Render> {
    Arc::new(move || {
        let (stx, srx) = mpsc::sync_channel(1);
        tx.send(Pending::Metrics(stx))
            .map_err(|_| "the event loop has ended".to_owned())?;
        wake.signal()
            .map_err(|e| format!("waking the event loop: {e}"))?;
        let snapshot = srx
            .recv_timeout(crate::metrics::LOOP_TIMEOUT)
            .map_err(|_| "the event loop did not answer in time".to_owned())?;
        Ok(crate::metrics::render(&snapshot))
    })
}

#[cfg(test)]
mod tests;
