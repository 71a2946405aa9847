//! The UAPI implementation of [`Dataplane`]: the unix socket
//! `SOCKET_DIR/IFNAME.sock` that `portdistrict-dataplane` (like wireguard-go)
//! serves. Requests are formatted by `portdistrict_wg::uapi::format_set`, `get`
//! answers read by `portdistrict_wg::uapi::parse_get`; every answer ends with
//! `errno=N` and a blank line.

use super::{Dataplane, DataplaneError, HandshakeSource, SOCKET_DIR};
use portdistrict_wg::config::{ConfigChange, DeviceSnapshot, PeerSnapshot};
use portdistrict_wg::uapi::{format_set, parse_get};
use portdistrict_wg::PublicKey;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest part of an unexpected answer quoted in an error.
const QUOTE_MAX: usize = 200;

/// A client of one interface's UAPI socket.
#[derive(Debug, Clone)]
pub struct UapiClient {
    ifname: String,
    socket: PathBuf,
}

impl UapiClient {
    /// The socket of `ifname` under [`SOCKET_DIR`].
    pub fn new(ifname: &str) -> UapiClient {
        UapiClient::in_dir(Path::new(SOCKET_DIR), ifname)
    }

    /// The socket of `ifname` under `dir`.
    pub fn in_dir(dir: &Path, ifname: &str) -> UapiClient {
        UapiClient {
            ifname: ifname.to_owned(),
            socket: dir.join(format!("{ifname}.sock")),
        }
    }

    /// The whole `get=1` answer: device fields and peers, in the dataplane's order.
    pub fn snapshot(&self) -> Result<DeviceSnapshot, DataplaneError> {
        let answer = self.exchange("get=1\n\n")?;
        parse_get(&answer).map_err(|source| DataplaneError::Get {
            ifname: self.ifname.clone(),
            source,
        })
    }

    /// The dataplane's `stats=1` counters (portdistrict-dataplane only), by name.
    pub fn counters(&self) -> Result<BTreeMap<String, String>, DataplaneError> {
        let answer = self.exchange("stats=1\n\n")?;
        match errno(&answer) {
            Some(0) => Ok(answer
                .lines()
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| *k != "errno")
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()),
            other => Err(self.failed("stats", other, &answer)),
        }
    }

    fn failed(&self, request: &'static str, errno: Option<i32>, answer: &str) -> DataplaneError {
        let mut end = answer.len().min(QUOTE_MAX);
        while !answer.is_char_boundary(end) {
            end -= 1;
        }
        DataplaneError::Failed {
            ifname: self.ifname.clone(),
            request,
            errno,
            answer: answer[..end].to_owned(),
        }
    }

    /// Writes `request` and reads the answer up to its blank line.
    fn exchange(&self, request: &str) -> Result<String, DataplaneError> {
        let path = &self.socket;
        let io = |what: &'static str| {
            move |source| DataplaneError::Io {
                what,
                path: path.clone(),
                source,
            }
        };
        let mut s = UnixStream::connect(path).map_err(|source| DataplaneError::Connect {
            path: path.clone(),
            source,
        })?;
        s.set_read_timeout(Some(TIMEOUT))
            .map_err(io("setting a timeout on"))?;
        s.set_write_timeout(Some(TIMEOUT))
            .map_err(io("setting a timeout on"))?;
        s.write_all(request.as_bytes()).map_err(io("writing to"))?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"\n\n") {
            let n = s.read(&mut buf).map_err(io("reading from"))?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(answer).map_err(|_| DataplaneError::NotText)
    }
}

impl Dataplane for UapiClient {
    fn interface(&self) -> &str {
        &self.ifname
    }

    fn apply(&mut self, change: &ConfigChange) -> Result<(), DataplaneError> {
        let mut text = String::new();
        format_set(&mut text, change);
        let answer = self.exchange(&text)?;
        match errno(&answer) {
            Some(0) => Ok(()),
            Some(errno) => Err(DataplaneError::Refused {
                ifname: self.ifname.clone(),
                errno,
            }),
            None => Err(self.failed("set", None, &answer)),
        }
    }

    fn peers(&mut self) -> Result<BTreeMap<PublicKey, PeerSnapshot>, DataplaneError> {
        Ok(self
            .snapshot()?
            .peers
            .into_iter()
            .map(|p| (p.public_key, p))
            .collect())
    }

    fn request_handshake(&mut self, _peer: PublicKey) -> Result<(), DataplaneError> {
        Err(DataplaneError::Unsupported {
            ifname: self.ifname.clone(),
            what: "a handshake",
            protocol: "the WireGuard UAPI",
        })
    }

    fn probe(&mut self, _peer: PublicKey, _to: SocketAddr, _ttl: u8) -> Result<(), DataplaneError> {
        Err(self.unsupported("a probe"))
    }

    fn pin(&mut self, _peer: PublicKey, _to: Option<SocketAddr>) -> Result<(), DataplaneError> {
        Err(self.unsupported("pinning an endpoint"))
    }

    fn hold(&mut self, _peer: PublicKey, _on: bool) -> Result<(), DataplaneError> {
        Err(self.unsupported("holding handshakes"))
    }

    fn send_raw(
        &mut self,
        _to: SocketAddr,
        _ttl: u8,
        _payload: &[u8],
    ) -> Result<(), DataplaneError> {
        Err(self.unsupported("a raw datagram"))
    }

    fn handshake_source(
        &mut self,
        _peer: PublicKey,
    ) -> Result<Option<HandshakeSource>, DataplaneError> {
        Err(self.unsupported("the handshake source"))
    }
}

impl UapiClient {
    /// What the UAPI cannot carry (it is wireguard-go's text protocol).
    fn unsupported(&self, what: &'static str) -> DataplaneError {
        DataplaneError::Unsupported {
            ifname: self.ifname.clone(),
            what,
            protocol: "the WireGuard UAPI",
        }
    }
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
    use std::os::unix::net::UnixListener;

    #[test]
    fn errno_is_the_last_status_line() {
        assert_eq!(errno("private_key=ab\nerrno=0\n\n"), Some(0));
        assert_eq!(errno("errno=-22\n\n"), Some(-22));
        assert_eq!(errno("nothing\n\n"), None);
    }

    #[test]
    fn a_missing_socket_names_the_path() {
        let e = UapiClient::in_dir(Path::new("/nonexistent-dir"), "pd0")
            .snapshot()
            .unwrap_err();
        let e = anyhow::Error::from(e);
        assert!(
            format!("{e:#}").contains("/nonexistent-dir/pd0.sock"),
            "{e:#}"
        );
    }

    /// Serves one connection on `dir/t0.sock`: reads a request, answers `answer`.
    fn serve_once(dir: &Path, answer: impl Into<String>) -> std::thread::JoinHandle<String> {
        let answer = answer.into();
        let listener = UnixListener::bind(dir.join("t0.sock")).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\n\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(req).unwrap()
        })
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pd-uapi-client-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn peers_are_read_from_the_get_answer_by_key() {
        let dir = temp_dir("get");
        let answer = format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\nendpoint=10.0.0.1:51820\n\
             last_handshake_time_sec=100\nlast_handshake_time_nsec=0\nrx_bytes=5\ntx_bytes=7\n\
             allowed_ip=fd00::/64\npublic_key={}\nerrno=0\n\n",
            "11".repeat(32),
            "03".repeat(32),
            "04".repeat(32)
        );
        let server = serve_once(&dir, answer);
        let peers = UapiClient::in_dir(&dir, "t0").peers().unwrap();
        assert_eq!(server.join().unwrap(), "get=1\n\n");
        let p = &peers[&PublicKey([3; 32])];
        assert_eq!(p.endpoint, Some("10.0.0.1:51820".parse().unwrap()));
        assert_eq!(p.last_handshake, Some(Duration::from_secs(100)));
        assert_eq!((p.rx_bytes, p.tx_bytes), (5, 7));
        assert_eq!(p.allowed_ips, [("fd00::".parse().unwrap(), 64)]);
        assert!(peers.contains_key(&PublicKey([4; 32])));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_refused_set_names_the_errno() {
        let dir = temp_dir("set");
        let server = serve_once(&dir, "errno=-98\n\n");
        let mut c = UapiClient::in_dir(&dir, "t0");
        let e = c
            .apply(&ConfigChange {
                listen_port: Some(52000),
                ..ConfigChange::default()
            })
            .unwrap_err();
        assert_eq!(server.join().unwrap(), "set=1\nlisten_port=52000\n\n");
        assert!(
            matches!(e, DataplaneError::Refused { errno: -98, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("errno -98"), "{e}");
        assert!(matches!(
            c.request_handshake(PublicKey([1; 32])),
            Err(DataplaneError::Unsupported { .. })
        ));
        let to: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let nat = [
            c.probe(PublicKey([1; 32]), to, 1).unwrap_err(),
            c.pin(PublicKey([1; 32]), Some(to)).unwrap_err(),
            c.send_raw(to, 2, b"x").unwrap_err(),
            c.handshake_source(PublicKey([1; 32])).unwrap_err(),
        ];
        for e in nat {
            assert!(matches!(e, DataplaneError::Unsupported { .. }), "{e}");
            assert!(e.to_string().contains("over the WireGuard UAPI"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
