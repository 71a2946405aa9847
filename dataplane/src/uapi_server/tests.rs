//! The socket server with real unix sockets; the test plays the event loop (it
//! receives the parsed requests and answers them), so "nothing applied" means that
//! no request reached it.

use super::*;
use std::os::unix::fs::FileTypeExt as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A throwaway socket directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("pd-uapi-test-{}-{n}/wg", std::process::id()));
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

const LIMITS: Limits = Limits {
    line_max: 1024,
    request_max: 64 * 1024,
    buffered_max: 128 * 1024,
    clients: 4,
    timeout: Duration::from_millis(400),
};

/// A server on a fresh socket; what reached the "event loop", in order.
struct Server {
    _dir: Dir,
    path: PathBuf,
    applied: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(limits: Limits) -> Self {
        let dir = Dir::new();
        let listener = bind_in(&dir.0, "t0").expect("bind");
        let path = dir.0.join("t0.sock");
        let (tx, rx) = mpsc::channel::<Pending>();
        let wake = Arc::new(EventFd::new().expect("eventfd"));
        spawn_with(listener, tx, wake, limits).expect("spawn");
        let applied = Arc::new(Mutex::new(Vec::new()));
        let log = applied.clone();
        std::thread::spawn(move || {
            for p in rx {
                let Pending::Uapi { call, reply: to } = p else {
                    continue;
                };
                let (what, reply) = match call {
                    Call::Stats => ("stats".to_owned(), "n=1\nerrno=0\n\n".to_owned()),
                    Call::Uapi(Request::Get) => ("get".to_owned(), "x=1\nerrno=0\n\n".to_owned()),
                    Call::Uapi(Request::Set(req)) => (format!("{req:?}"), "errno=0\n\n".to_owned()),
                };
                log.lock().expect("lock").push(what);
                let _ = to.send(reply);
            }
        });
        Server {
            _dir: dir,
            path,
            applied,
        }
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }

    fn applied(&self) -> Vec<String> {
        self.applied.lock().expect("lock").clone()
    }
}

/// Everything the server sends until it closes (a reset after the reply counts as
/// the close: the server does not read what it refused).
fn read_all(s: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the reply: {e} (after {out:?})"),
        }
    }
    String::from_utf8(out).expect("utf-8 reply")
}

/// Reads one reply (up to its blank line).
fn read_reply(s: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\n\n") {
        match s.read(&mut b) {
            Ok(1) => out.push(b[0]),
            other => panic!("reply cut short: {other:?} after {out:?}"),
        }
    }
    String::from_utf8(out).expect("utf-8 reply")
}

fn exchange(server: &Server, request: &[u8]) -> String {
    let mut s = server.connect();
    s.write_all(request).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    read_all(&mut s)
}

#[test]
fn socket_is_private_and_directory_not_writable_by_others() {
    let server = Server::start(LIMITS);
    let sock = std::fs::metadata(&server.path).expect("stat socket");
    assert!(sock.file_type().is_socket());
    assert_eq!(sock.permissions().mode() & 0o7777, 0o600);
    let dir = std::fs::metadata(server.path.parent().expect("dir")).expect("stat dir");
    assert_eq!(dir.permissions().mode() & 0o7777, 0o755);
    // A second server for the same interface is refused while the first serves.
    let e = bind_in(server.path.parent().expect("dir"), "t0").unwrap_err();
    assert!(format!("{e:#}").contains("in use"), "{e:#}");
}

#[test]
fn complete_requests_are_answered_in_order() {
    let server = Server::start(LIMITS);
    let reply = exchange(&server, b"get=1\n\nset=1\nlisten_port=7\n\nstats=1\n\n");
    assert_eq!(reply, "x=1\nerrno=0\n\nerrno=0\n\nn=1\nerrno=0\n\n");
    let applied = server.applied();
    assert_eq!(applied.len(), 3, "{applied:?}");
    assert!(applied[1].contains("listen_port: Some(7)"), "{applied:?}");
}

#[test]
fn a_line_that_is_not_utf8_refuses_the_whole_request() {
    let server = Server::start(LIMITS);
    let reply = exchange(
        &server,
        b"set=1\nreplace_peers=true\n\xff\xfe\nlisten_port=1\n\n",
    );
    assert_eq!(reply, "errno=-22\n\n");
    assert!(server.applied().is_empty(), "{:?}", server.applied());
    // The server goes on serving.
    assert_eq!(exchange(&server, b"get=1\n\n"), "x=1\nerrno=0\n\n");
}

#[test]
fn a_request_cut_short_applies_nothing() {
    let server = Server::start(LIMITS);
    let reply = exchange(&server, b"set=1\nreplace_peers=true\nlisten_port=1\n");
    assert_eq!(reply, "errno=-22\n\n");
    let reply = exchange(&server, b"set=1\nreplace_peers=true\nlisten_p");
    assert_eq!(reply, "errno=-22\n\n");
    assert!(server.applied().is_empty(), "{:?}", server.applied());
}

#[test]
fn a_request_that_does_not_arrive_in_time_applies_nothing() {
    let server = Server::start(LIMITS);
    let mut s = server.connect();
    s.write_all(b"set=1\nreplace_peers=true\n").expect("write");
    let t = Instant::now();
    let reply = read_all(&mut s);
    let took = t.elapsed();
    assert_eq!(reply, "errno=-22\n\n");
    assert!(
        took >= LIMITS.timeout / 2 && took < LIMITS.timeout * 10,
        "answered after {took:?}"
    );
    // Completing it now changes nothing: the connection is closed.
    let _ = s.write_all(b"\n");
    assert!(server.applied().is_empty(), "{:?}", server.applied());
}

#[test]
fn an_idle_client_is_dropped_after_the_timeout() {
    let server = Server::start(LIMITS);
    let mut s = server.connect();
    assert_eq!(read_all(&mut s), "");
}

#[test]
fn an_overlong_line_is_refused_without_holding_it() {
    let server = Server::start(LIMITS);
    let mut s = server.connect();
    let mut writer = s.try_clone().expect("clone");
    // 4 MiB without a newline; the server refuses it after 1 KiB and closes, so
    // the write fails part of the way (EPIPE).
    let t = std::thread::spawn(move || {
        let _ = writer.write_all(b"set=1\nallowed_ip=");
        let junk = vec![b'1'; 64 * 1024];
        for _ in 0..64 {
            if writer.write_all(&junk).is_err() {
                return false;
            }
        }
        true
    });
    assert_eq!(read_all(&mut s), "errno=-90\n\n");
    drop(s);
    t.join().expect("writer");
    assert!(server.applied().is_empty());
    assert_eq!(exchange(&server, b"get=1\n\n"), "x=1\nerrno=0\n\n");
}

#[test]
fn an_oversized_request_is_refused() {
    let server = Server::start(LIMITS);
    let mut big = b"set=1\n".to_vec();
    while big.len() <= LIMITS.request_max {
        big.extend_from_slice(b"listen_port=1\n");
    }
    big.extend_from_slice(b"\n");
    let mut s = server.connect();
    let mut writer = s.try_clone().expect("clone");
    let t = std::thread::spawn(move || writer.write_all(&big).is_ok());
    assert_eq!(read_all(&mut s), "errno=-90\n\n");
    t.join().expect("writer");
    assert!(server.applied().is_empty());
}

#[test]
fn idle_clients_beyond_the_limit_make_room_or_are_closed() {
    let server = Server::start(Limits {
        timeout: Duration::from_secs(30),
        ..LIMITS
    });
    // 40 clients that send nothing: at most `clients` stay connected.
    let mut idle: Vec<UnixStream> = (0..40).map(|_| server.connect()).collect();
    // A real request still gets through, at once.
    let t = Instant::now();
    assert_eq!(exchange(&server, b"get=1\n\n"), "x=1\nerrno=0\n\n");
    assert!(t.elapsed() < Duration::from_secs(5));
    let mut closed = 0;
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => closed += 1,
            _ => {}
        }
    }
    assert!(
        closed >= 40 - LIMITS.clients,
        "only {closed} of 40 idle clients closed"
    );
}

#[test]
fn busy_clients_are_not_displaced() {
    let server = Server::start(Limits {
        timeout: Duration::from_secs(30),
        ..LIMITS
    });
    // Every slot holds a begun request: a new client is closed at once.
    let mut busy: Vec<UnixStream> = (0..LIMITS.clients)
        .map(|_| {
            let mut s = server.connect();
            s.write_all(b"set=1\n").expect("write");
            s
        })
        .collect();
    // Let the server read them.
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = server.connect();
    let _ = extra.write_all(b"get=1\n\n");
    assert_eq!(read_all(&mut extra), "");
    // The busy ones finish their requests and are answered.
    for s in &mut busy {
        s.write_all(b"listen_port=2\n\n").expect("write");
        assert_eq!(read_reply(s), "errno=0\n\n");
    }
    assert_eq!(server.applied().len(), LIMITS.clients);
}
