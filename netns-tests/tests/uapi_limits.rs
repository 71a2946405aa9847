//! The UAPI socket under attack from local clients, each checked against a real
//! dataplane: the socket is never connectable by another user, even under umask 0
//! and with the chmod after bind(2) held back; a request with a line that is not
//! UTF-8 is refused whole (peers and traffic intact); a 40 MiB line is refused
//! without being held in memory; 800 idle clients neither make 800 threads nor
//! keep `wg show` out.

use portdistrict_wg::uapi::SOCKET_DIR;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use portdistrict_netns_tests::{
    assert_ping, find_daemon_pids, run, try_run, unique_ifname, uut_binary, wait_until, ChildGuard,
    Daemon, Family, Netns, Pair, PairOptions,
};

/// Everything the server sends until it closes (a reset after the reply counts as
/// the close: a refusing server does not read the rest of the request).
fn read_all(s: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the UAPI reply: {e} (after {out:?})"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn connect(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(d.socket_path()).expect("connect to the UAPI socket");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    s
}

/// Sends `request` in a writer thread (it may be refused part of the way) and
/// returns what the dataplane answered.
fn send(d: &Daemon, request: Vec<u8>) -> String {
    let mut s = connect(d);
    let mut writer = s.try_clone().expect("clone");
    let w = std::thread::spawn(move || {
        if writer.write_all(&request).is_ok() {
            let _ = writer.shutdown(std::net::Shutdown::Write);
        }
    });
    let reply = read_all(&mut s);
    drop(s);
    w.join().expect("writer thread");
    reply
}

/// The peers (public key and allowed IPs) of `wg show dump`, without counters.
fn peers(d: &Daemon) -> Vec<(String, String)> {
    d.show("dump")
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_owned(), f[3].to_owned())
        })
        .collect()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .count()
}

#[test]
fn a_line_that_is_not_utf8_refuses_the_whole_set() {
    let pair = Pair::new(&PairOptions::default());
    let d = &pair.right.daemon;
    let before = peers(d);
    assert_eq!(before.len(), 1, "{before:?}");
    // Applied line by line, this would remove every peer before the bad line.
    let reply = send(
        d,
        b"set=1\nreplace_peers=true\n\xff\xfe\xfd\nlisten_port=40999\n\n".to_vec(),
    );
    assert_eq!(reply, "errno=-22\n\n");
    assert_eq!(peers(d), before, "a refused request changed the peers");
    assert_ping(&pair.left.ns, pair.right.tunnel_addr(Family::V4), 2);
    // The same request cut short (no blank line) is refused as well.
    let reply = send(d, b"set=1\nreplace_peers=true\n".to_vec());
    assert_eq!(reply, "errno=-22\n\n");
    assert_eq!(peers(d), before);
    assert_ping(&pair.left.ns, pair.right.tunnel_addr(Family::V4), 2);
}

#[test]
fn a_40_mib_line_is_refused_without_being_held() {
    let pair = Pair::new(&PairOptions::default());
    let d = &pair.right.daemon;
    let pid = d.pid();
    let peak_before = status_kib(pid, "VmHWM:");
    let mut request = b"set=1\nallowed_ip=".to_vec();
    request.resize(request.len() + 40 * 1024 * 1024, b'1');
    let t = Instant::now();
    let reply = send(d, request);
    let took = t.elapsed();
    let peak_after = status_kib(pid, "VmHWM:");
    assert!(
        peak_after < peak_before + 16 * 1024,
        "peak RSS grew from {peak_before} kB to {peak_after} kB"
    );
    assert_eq!(reply, "errno=-90\n\n", "after {took:?}");
    assert_ping(&pair.left.ns, pair.right.tunnel_addr(Family::V4), 2);
    assert_eq!(peers(d).len(), 1);
}

#[test]
fn idle_clients_make_no_threads_and_do_not_keep_wg_out() {
    let pair = Pair::new(&PairOptions::default());
    let d = &pair.right.daemon;
    let pid = d.pid();
    let threads_before = threads(pid);
    let idle: Vec<UnixStream> = (0..800)
        .map(|i| {
            UnixStream::connect(d.socket_path())
                .unwrap_or_else(|e| panic!("client {i}: connect: {e}"))
        })
        .collect();
    // While they hang: the dataplane answers wg and forwards.
    let t = Instant::now();
    let dump = d.show("dump");
    assert!(dump.lines().count() == 2, "{dump}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "wg show took {:?}",
        t.elapsed()
    );
    assert!(d.stats().contains_key("rx_malformed"));
    assert_ping(&pair.left.ns, pair.right.tunnel_addr(Family::V4), 2);
    let during = threads(pid);
    assert!(
        during < threads_before + 20,
        "{during} threads with 800 clients (before: {threads_before})"
    );
    drop(idle);
    assert_eq!(peers(d).len(), 1);
}

/// A dataplane started by hand (under strace), stopped on drop.
struct Traced {
    _strace: ChildGuard,
    ifname: String,
}

impl Drop for Traced {
    fn drop(&mut self) {
        for pid in find_daemon_pids(&uut_binary(), &self.ifname) {
            let _ = try_run(&["kill", "-TERM", &pid.to_string()]);
        }
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            find_daemon_pids(&uut_binary(), &self.ifname).is_empty()
        });
        for pid in find_daemon_pids(&uut_binary(), &self.ifname) {
            let _ = try_run(&["kill", "-KILL", &pid.to_string()]);
        }
        let _ = std::fs::remove_file(format!("{SOCKET_DIR}/{}.sock", self.ifname));
    }
}

/// Whether user `nobody` can connect to `path`.
fn nobody_connects(path: &str) -> bool {
    let out = try_run(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "python3",
        "-c",
        "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n",
        path,
    ]);
    out.status.success()
}

#[test]
fn the_socket_is_never_open_to_other_users() {
    // umask 0, and every chmod of the dataplane held back 2 s by strace: a socket
    // that relies on its chmod after bind(2) is open to everyone meanwhile.
    let ns = Netns::new("umask");
    let ifname = unique_ifname("pdw");
    let path = format!("{SOCKET_DIR}/{ifname}.sock");
    let bin = uut_binary();
    let log = portdistrict_netns_tests::TempDir::new("umask-log");
    let log_file = std::fs::File::create(log.path().join("log")).expect("log");
    let mut cmd = ns.command(&[
        "sh",
        "-c",
        "umask 000; exec \"$@\"",
        "sh",
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=chmod,fchmod,fchmodat",
        "-e",
        "inject=chmod,fchmod,fchmodat:delay_enter=2000000",
        bin.to_str().expect("utf-8 path"),
        "--foreground",
        &ifname,
    ]);
    cmd.env("PD_XDP", "off")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("dup"))
        .stderr(log_file);
    let _d = Traced {
        _strace: ChildGuard::spawn("strace dataplane", &mut cmd),
        ifname: ifname.clone(),
    };
    let appeared = wait_until(Duration::from_secs(15), Duration::from_millis(1), || {
        std::fs::symlink_metadata(&path).is_ok()
    });
    let log_text = || std::fs::read_to_string(log.path().join("log")).unwrap_or_default();
    assert!(appeared, "no socket {path}; log:\n{}", log_text());
    // From the moment it exists, no group or other permission, and nobody else
    // gets in.
    let meta = std::fs::symlink_metadata(&path).expect("stat socket");
    assert!(meta.file_type().is_socket());
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "socket mode {mode:o} right after bind");
    assert!(!nobody_connects(&path), "user nobody connected to {path}");
    let dir = std::fs::metadata(SOCKET_DIR).expect("stat dir");
    assert_eq!(
        dir.permissions().mode() & 0o022,
        0,
        "socket directory writable by others"
    );
    // Once it runs: 0600, root is served, nobody still is not.
    let ready = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        try_run(&["wg", "show", &ifname]).status.success()
    });
    assert!(ready, "wg show {ifname} failed; log:\n{}", log_text());
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!nobody_connects(&path), "user nobody connected to {path}");
    run(&["wg", "show", &ifname]);
}
