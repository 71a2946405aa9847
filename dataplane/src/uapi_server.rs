//! The UAPI unix socket `/var/run/wireguard/IFNAME.sock`.
//!
//! One thread accepts connections and reads requests (`get=1`, `set=1`, and our own
//! `stats=1`); it parses each one completely (so a malformed request is answered with
//! `errno=-EINVAL` and changes nothing) and hands it to the event loop over a channel,
//! waking it through an eventfd. The loop owns the device, applies the request and
//! sends the reply text back.

use crate::io::EventFd;
use anyhow::Context as _;
use portdistrict_wg::uapi::{self, Request};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Directory of UAPI sockets, as every WireGuard implementation uses it.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// A parsed request waiting for the event loop.
pub enum Call {
    /// `get=1` or `set=1`.
    Uapi(Request),
    /// `stats=1`: the drop counters.
    Stats,
}

/// A request and the channel its reply text goes back on.
pub struct Pending {
    /// What was asked.
    pub call: Call,
    /// Where the complete reply (ending in `errno=N\n\n`) goes.
    pub reply: mpsc::SyncSender<String>,
}

/// The socket's path for `ifname`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// Binds the UAPI socket, refusing if another process already serves it and
/// removing a stale file otherwise.
pub fn bind(ifname: &str) -> anyhow::Result<UnixListener> {
    std::fs::create_dir_all(SOCKET_DIR).with_context(|| format!("creating {SOCKET_DIR}"))?;
    let _ = std::fs::set_permissions(SOCKET_DIR, std::fs::Permissions::from_mode(0o755));
    let path = socket_path(ifname);
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
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// Starts the accept thread.
pub fn spawn(
    listener: UnixListener,
    tx: mpsc::Sender<Pending>,
    wake: Arc<EventFd>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("uapi".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (tx, wake) = (tx.clone(), wake.clone());
                // One thread per client: a slow client must not block the others.
                let _ = std::thread::Builder::new()
                    .name("uapi-conn".into())
                    .spawn(move || serve(conn, &tx, &wake));
            }
        })?;
    Ok(())
}

/// Reads one request (up to a blank line or EOF). `None` at EOF with nothing read.
fn read_request(r: &mut impl BufRead) -> Option<String> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return (!text.is_empty()).then_some(text),
            Ok(_) => {}
        }
        let blank = line == "\n";
        text.push_str(&line);
        if blank {
            return Some(text);
        }
    }
}

/// Interface index of `name` (for link-local endpoints such as `[fe80::1%eth0]:51820`).
fn scope_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

fn serve(conn: UnixStream, tx: &mpsc::Sender<Pending>, wake: &EventFd) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut writer = std::io::BufWriter::new(write_half);
    while let Some(text) = read_request(&mut reader) {
        let call = if text.starts_with("stats=1\n") {
            Ok(Call::Stats)
        } else {
            uapi::parse_request_with(&text, &scope_id).map(Call::Uapi)
        };
        let reply = match call {
            Err(e) if e.closes_connection() => {
                log::warn!("UAPI request refused, closing: {e}");
                return;
            }
            Err(e) => {
                log::warn!("UAPI request refused: {e}");
                let mut out = String::new();
                uapi::format_errno(&mut out, e.errno());
                out
            }
            Ok(call) => {
                let (rtx, rrx) = mpsc::sync_channel(1);
                if tx.send(Pending { call, reply: rtx }).is_err() || wake.signal().is_err() {
                    return;
                }
                match rrx.recv() {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
        };
        if writer
            .write_all(reply.as_bytes())
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
    }
}
