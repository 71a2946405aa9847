//! A client of the WireGuard cross-platform userspace API: the unix socket
//! `/var/run/wireguard/IFNAME.sock` that `portdistrict-dataplane` (like wireguard-go)
//! serves. Requests are formatted by `portdistrict_wg::uapi::format_set`; the answer
//! ends with `errno=N` and a blank line.

use anyhow::{bail, Context as _};
use portdistrict_wg::config::ConfigChange;
use portdistrict_wg::uapi::format_set;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where userspace WireGuard implementations put their sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";
const TIMEOUT: Duration = Duration::from_secs(10);

/// The socket of interface `ifname` under `dir`.
pub fn socket_path(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(format!("{ifname}.sock"))
}

/// Sends `req` to the interface's socket; fails with the errno the daemon answered.
pub fn set(dir: &Path, ifname: &str, req: &ConfigChange) -> anyhow::Result<()> {
    let mut text = String::new();
    format_set(&mut text, req);
    let answer = exchange(&socket_path(dir, ifname), &text)?;
    match errno(&answer) {
        Some(0) => Ok(()),
        Some(e) => bail!(
            "{ifname}: the dataplane refused the configuration (errno {e}: {})",
            std::io::Error::from_raw_os_error(-e)
        ),
        None => bail!("{ifname}: no errno in the dataplane's answer {answer:?}"),
    }
}

/// The `get=1` dump of the interface (`key=value` lines).
pub fn get(dir: &Path, ifname: &str) -> anyhow::Result<String> {
    let answer = exchange(&socket_path(dir, ifname), "get=1\n\n")?;
    match errno(&answer) {
        Some(0) => Ok(answer),
        other => bail!("{ifname}: get failed ({other:?})"),
    }
}

/// The dataplane's `stats=1` counters (portdistrict-dataplane only), by name.
pub fn stats(
    dir: &Path,
    ifname: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let answer = exchange(&socket_path(dir, ifname), "stats=1\n\n")?;
    match errno(&answer) {
        Some(0) => Ok(answer
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| *k != "errno")
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()),
        other => bail!("{ifname}: stats failed ({other:?})"),
    }
}

/// Writes `request` and reads the answer up to its blank line.
fn exchange(path: &Path, request: &str) -> anyhow::Result<String> {
    let mut s = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to {} (is the dataplane running?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(request.as_bytes())
        .with_context(|| format!("writing to {}", path.display()))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"\n\n") {
        let n = s
            .read(&mut buf)
            .with_context(|| format!("reading from {}", path.display()))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(answer).context("the dataplane's answer is not text")
}

/// The value of the last `errno=` line.
fn errno(answer: &str) -> Option<i32> {
    answer
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("errno="))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_is_the_last_status_line() {
        assert_eq!(errno("private_key=ab\nerrno=0\n\n"), Some(0));
        assert_eq!(errno("errno=-22\n\n"), Some(-22));
        assert_eq!(errno("nothing\n\n"), None);
    }

    #[test]
    fn a_missing_socket_names_the_path() {
        let e = get(Path::new("/nonexistent-dir"), "pd0").unwrap_err();
        assert!(
            format!("{e:#}").contains("/nonexistent-dir/pd0.sock"),
            "{e:#}"
        );
    }
}
