//! The daemon side of the control socket: a listener thread accepts callers, checks
//! their peer credentials ([`Access::check`]), reads one bounded request with a
//! timeout, and hands it to the daemon's own loop through a channel; the loop answers
//! it in [`Server::poll`] between its other work, so the daemon stays the one writer
//! of its stores. At most [`MAX_CLIENTS`] callers are served at once.

use super::protocol::{
    decode, encode, Access, Answer, Caller, CtlError, Envelope, Request, MAX_FRAME,
};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

/// Callers served at once; more are answered [`CtlError::Busy`].
pub const MAX_CLIENTS: usize = 8;
/// How long a caller may take to send its request, or to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for the daemon's loop to take its request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the listener looks for a stop.
const TICK: Duration = Duration::from_millis(50);

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A daemon already answers on the socket.
    #[error("{0} is in use: another daemon of this kind runs with this --run-dir")]
    InUse(PathBuf),
    /// A system call failed.
    #[error("{call} {path}")]
    Syscall {
        /// What was done.
        call: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn sys(call: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServerError {
    let path = path.to_owned();
    move |source| ServerError::Syscall { call, path, source }
}

/// A request waiting for the daemon's loop.
struct Pending {
    request: Request,
    reply: SyncSender<Answer>,
}

/// The listening control socket of one daemon (removed when dropped).
pub struct Server {
    path: PathBuf,
    rx: Receiver<Pending>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `path` (mode 0660; with a control group, owned by it and its directory
    /// made 0710 for that group) and starts accepting requests for `state_dir` (the
    /// daemon's, canonical). A stale socket file (nobody listening) is replaced; a
    /// live one is [`ServerError::InUse`].
    pub fn bind(path: &Path, access: Access, state_dir: &Path) -> Result<Server, ServerError> {
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(sys("removing the stale socket", path)(e))
            }
            _ => {}
        }
        // The socket is born 0660 (no window in which others could connect), then
        // set so explicitly.
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o117));
        let bound = UnixListener::bind(path);
        rustix::process::umask(old);
        let listener = bound.map_err(sys("binding", path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(sys("chmod 0660", path))?;
        if let Some(gid) = access.group {
            std::os::unix::fs::chown(path, Some(0), Some(gid)).map_err(sys("chown", path))?;
        }
        let dir = path.parent().unwrap_or(Path::new("/")).to_owned();
        let state_dir = state_dir.to_owned();
        listener
            .set_nonblocking(true)
            .map_err(sys("setting O_NONBLOCK on", path))?;
        let (tx, rx) = sync_channel(MAX_CLIENTS);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("ctl-listener".into())
                .spawn(move || listen(&listener, &dir, access, &state_dir, &tx, &stop))
                .map_err(sys("starting the listener for", path))?
        };
        Ok(Server {
            path: path.to_owned(),
            rx,
            stop,
            thread: Some(thread),
        })
    }

    /// Answers the requests that arrived since the last call with `handle` (call it
    /// from the daemon's loop, at least every few hundred milliseconds). Returns
    /// whether any of them may have changed the daemon's state.
    pub fn poll(&self, mut handle: impl FnMut(&Request) -> Answer) -> bool {
        let mut changed = false;
        while let Ok(p) = self.rx.try_recv() {
            let answer = handle(&p.request);
            changed |= p.request.changes_state() && matches!(answer, Answer::Done { .. });
            let _ = p.reply.send(answer);
        }
        changed
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn listen(
    listener: &UnixListener,
    dir: &Path,
    access: Access,
    state_dir: &Path,
    tx: &SyncSender<Pending>,
    stop: &AtomicBool,
) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        if let Some(gid) = access.group {
            keep_dir_open(dir, gid);
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) => {
                std::thread::sleep(TICK);
                continue;
            }
        };
        if active.load(Ordering::Acquire) >= MAX_CLIENTS {
            let _ = refuse(stream, CtlError::Busy);
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let (tx, mine, state_dir) = (tx.clone(), Arc::clone(&active), state_dir.to_owned());
        let spawned = std::thread::Builder::new()
            .name("ctl-client".into())
            .spawn(move || {
                let _ = serve_one(stream, access, &state_dir, &tx);
                mine.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Group members reach the socket only through its directory: 0710, the group's.
/// (Other commands make the run directory 0700 again; this puts the traverse bit back.)
fn keep_dir_open(dir: &Path, gid: u32) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    if meta.gid() != gid {
        let _ = std::os::unix::fs::chown(dir, None, Some(gid));
    }
    if meta.permissions().mode() & 0o777 != 0o710 {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710));
    }
}

fn refuse(mut stream: UnixStream, error: CtlError) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(&encode(&Answer::Refused { error }))
}

/// The caller's credentials, as the kernel saw them at `connect`.
pub(crate) fn caller_of(stream: &UnixStream) -> std::io::Result<Caller> {
    let cred = rustix::net::sockopt::socket_peercred(stream)?;
    let pid = cred.pid.as_raw_nonzero();
    let groups = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| super::protocol::groups_of_status(&s))
        .unwrap_or_default();
    Ok(Caller {
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
        groups,
    })
}

/// One caller: credentials, one request, its answer.
fn serve_one(
    stream: UnixStream,
    access: Access,
    state_dir: &Path,
    tx: &SyncSender<Pending>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let caller = caller_of(&stream)?;
    if let Err(error) = access.check(&caller) {
        return refuse(stream, error);
    }
    let mut frame = Vec::new();
    BufReader::new((&stream).take(MAX_FRAME as u64 + 1)).read_until(b'\n', &mut frame)?;
    let answer = match decode::<Envelope>(&frame) {
        Err(error) => Answer::Refused { error },
        Ok(e) if e.state_dir != state_dir => Answer::Refused {
            error: CtlError::OtherState {
                served: state_dir.to_owned(),
            },
        },
        Ok(Envelope { request, .. }) => {
            let (reply, answer) = sync_channel(1);
            if tx.send(Pending { request, reply }).is_err() {
                Answer::Refused {
                    error: CtlError::Busy,
                }
            } else {
                answer
                    .recv_timeout(ANSWER_TIMEOUT)
                    .unwrap_or(Answer::Refused {
                        error: CtlError::Busy,
                    })
            }
        }
    };
    (&stream).write_all(&encode(&answer))
}

#[cfg(test)]
mod tests {
    use super::super::client::{call, Reached};
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn envelope(request: Request) -> Envelope {
        Envelope {
            state_dir: "/s".into(),
            request,
        }
    }

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pd-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Polls `server` from a thread until `done`, counting the requests handled.
    fn answering(
        server: Server,
        handled: Arc<AtomicU32>,
    ) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let done = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&done);
        let t = std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                server.poll(|r| {
                    handled.fetch_add(1, Ordering::Relaxed);
                    Answer::Done {
                        output: format!("{r:?}"),
                    }
                });
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        (done, t)
    }

    fn raw(path: &Path, bytes: &[u8]) -> Answer {
        let mut s = UnixStream::connect(path).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut line = Vec::new();
        BufReader::new(&s).read_until(b'\n', &mut line).unwrap();
        decode(&line).unwrap()
    }

    #[test]
    fn a_request_is_answered_by_the_loop_and_garbage_changes_nothing() {
        let dir = temp("serve");
        let path = dir.join("t.sock");
        let server = Server::bind(&path, Access::default(), Path::new("/s")).unwrap();
        use std::os::unix::fs::FileTypeExt as _;
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert!(matches!(
            Server::bind(&path, Access::default(), Path::new("/s")),
            Err(ServerError::InUse(_))
        ));
        let handled = Arc::new(AtomicU32::new(0));
        let (done, t) = answering(server, Arc::clone(&handled));
        let r = Request::ExitRevoke { who: "keyA".into() };
        let other = Envelope {
            state_dir: "/other".into(),
            request: r.clone(),
        };
        assert_eq!(
            call(&path, &other).unwrap(),
            Reached::Answer(Answer::Refused {
                error: CtlError::OtherState {
                    served: "/s".into()
                }
            })
        );
        assert_eq!(
            handled.load(Ordering::Relaxed),
            0,
            "another state directory's request"
        );
        assert_eq!(
            call(&path, &envelope(r.clone())).unwrap(),
            Reached::Answer(Answer::Done {
                output: format!("{r:?}")
            })
        );
        assert_eq!(handled.load(Ordering::Relaxed), 1);
        let mut big = b"{\"request\":\"exit_revoke\",\"who\":\"".to_vec();
        big.resize(MAX_FRAME + 10, b'a');
        assert_eq!(
            raw(&path, &big),
            Answer::Refused {
                error: CtlError::TooLarge { limit: MAX_FRAME }
            }
        );
        assert!(matches!(
            raw(&path, b"{\"request\":\"rm_rf\"}\n"),
            Answer::Refused {
                error: CtlError::Malformed { .. }
            }
        ));
        assert_eq!(
            handled.load(Ordering::Relaxed),
            1,
            "garbage reached the loop"
        );
        done.store(true, Ordering::Relaxed);
        t.join().unwrap();
        assert!(!path.exists(), "the socket goes with the server");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_stale_socket_is_no_daemon_and_is_replaced() {
        let dir = temp("stale");
        let path = dir.join("t.sock");
        assert_eq!(
            call(&path, &envelope(Request::ExitList { json: false })).unwrap(),
            Reached::NoDaemon
        );
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert_eq!(
            call(&path, &envelope(Request::ExitList { json: false })).unwrap(),
            Reached::NoDaemon
        );
        let server = Server::bind(&path, Access::default(), Path::new("/s")).unwrap();
        drop(server);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn peer_credentials_are_the_callers() {
        let (a, _b) = UnixStream::pair().unwrap();
        let me = caller_of(&a).unwrap();
        assert_eq!(me.uid, rustix::process::geteuid().as_raw());
        assert_eq!(me.gid, rustix::process::getegid().as_raw());
    }

    /// Run by [`a_caller_outside_the_group_is_refused`] as user nobody: calls the
    /// socket named by `PD_CTL_TEST_SOCKET` and prints what came back.
    #[test]
    fn child_calls_the_socket() {
        let Ok(path) = std::env::var("PD_CTL_TEST_SOCKET") else {
            return;
        };
        let got = call(
            Path::new(&path),
            &envelope(Request::ExitRevoke { who: "x".into() }),
        );
        println!("CHILD-RESULT {got:?}");
    }

    #[test]
    fn a_caller_outside_the_group_is_refused() {
        use std::os::unix::process::CommandExt as _;
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to run a caller as another user");
            return;
        }
        let child = |path: &Path, gid: u32| {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "ctl::server::tests::child_calls_the_socket",
                    "--nocapture",
                ])
                .env("PD_CTL_TEST_SOCKET", path)
                .uid(65534)
                .gid(gid)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        // Without a group, even a caller the file lets through (0666) is refused on
        // its credentials, and its request never reaches the loop.
        let dir = temp("perm");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("t.sock");
        let server = Server::bind(&path, Access::default(), Path::new("/s")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let handled = Arc::new(AtomicU32::new(0));
        let (done, t) = answering(server, Arc::clone(&handled));
        let refused = child(&path, 65534);
        assert!(
            refused.contains("CHILD-RESULT Ok(Answer(Refused { error: Denied { uid: 65534 } }))"),
            "{refused}"
        );
        assert_eq!(
            handled.load(Ordering::Relaxed),
            0,
            "a refused caller reached the loop"
        );
        done.store(true, Ordering::Relaxed);
        t.join().unwrap();
        // With a group: its members get through the directory (0710) and the check;
        // others do not even reach the socket.
        let server = Server::bind(&path, Access { group: Some(4242) }, Path::new("/s")).unwrap();
        let (done, t) = answering(server, Arc::clone(&handled));
        let member = child(&path, 4242);
        assert!(member.contains("CHILD-RESULT Ok(Answer(Done"), "{member}");
        assert_eq!(handled.load(Ordering::Relaxed), 1);
        let outsider = child(&path, 65534);
        assert!(outsider.contains("CHILD-RESULT Err(Denied"), "{outsider}");
        assert_eq!(handled.load(Ordering::Relaxed), 1);
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o710, 4242));
        done.store(true, Ordering::Relaxed);
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
