//! wireguard-tools wrappers: keys, peer settings for `wg set`, `wg show dump` parsing and
//! config normalization for showconf comparisons.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::cmd::run;

/// A WireGuard key pair in base64, from `wg genkey` / `wg pubkey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keypair {
    /// Private key (base64).
    pub private: String,
    /// Public key (base64).
    pub public: String,
}

impl Keypair {
    /// Generates a fresh key pair.
    pub fn generate() -> Keypair {
        let private = run(&["wg", "genkey"]).trim().to_owned();
        let public = pubkey(&private);
        Keypair { private, public }
    }
}

/// `wg pubkey` of a base64 private key.
fn pubkey(private: &str) -> String {
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `wg pubkey`: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(format!("{private}\n").as_bytes())
        .unwrap_or_else(|e| panic!("cannot write to `wg pubkey`: {e}"));
    drop(stdin);
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("`wg pubkey` failed: {e}"));
    assert!(
        out.status.success(),
        "`wg pubkey` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A fresh preshared key from `wg genpsk`.
pub fn genpsk() -> String {
    run(&["wg", "genpsk"]).trim().to_owned()
}

/// One peer's settings, applied with `wg set IF peer ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's public key.
    pub public_key: String,
    /// Optional preshared key (base64).
    pub preshared_key: Option<String>,
    /// Where to send to before the peer has been heard from.
    pub endpoint: Option<SocketAddr>,
    /// AllowedIPs in CIDR notation.
    pub allowed_ips: Vec<String>,
    /// PersistentKeepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
}

impl Peer {
    /// A peer with `allowed_ips` and nothing else.
    pub fn new(public_key: &str, allowed_ips: &[&str]) -> Peer {
        Peer {
            public_key: public_key.to_owned(),
            preshared_key: None,
            endpoint: None,
            allowed_ips: allowed_ips.iter().map(|s| (*s).to_owned()).collect(),
            persistent_keepalive: None,
        }
    }

    /// With an endpoint.
    pub fn endpoint(mut self, endpoint: SocketAddr) -> Peer {
        self.endpoint = Some(endpoint);
        self
    }

    /// With a preshared key.
    pub fn psk(mut self, psk: &str) -> Peer {
        self.preshared_key = Some(psk.to_owned());
        self
    }

    /// With a persistent keepalive interval.
    pub fn keepalive(mut self, secs: u16) -> Peer {
        self.persistent_keepalive = Some(secs);
        self
    }

    /// The `peer ...` arguments of `wg set`; `psk_file` holds `preshared_key`.
    pub(crate) fn wg_set_args(&self, psk_file: Option<&Path>) -> Vec<String> {
        let mut args = vec!["peer".to_owned(), self.public_key.clone()];
        if let Some(path) = psk_file {
            args.extend(["preshared-key".to_owned(), path.display().to_string()]);
        }
        if let Some(ep) = self.endpoint {
            args.extend(["endpoint".to_owned(), ep.to_string()]);
        }
        if let Some(secs) = self.persistent_keepalive {
            args.extend(["persistent-keepalive".to_owned(), secs.to_string()]);
        }
        args.extend(["allowed-ips".to_owned(), self.allowed_ips.join(",")]);
        args
    }
}

/// One peer line of `wg show IF dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Public key.
    pub public_key: String,
    /// Current endpoint, `None` when `(none)`.
    pub endpoint: Option<String>,
    /// AllowedIPs as printed.
    pub allowed_ips: Vec<String>,
    /// Unix time of the latest handshake, 0 if none.
    pub latest_handshake: u64,
    /// Bytes received from this peer.
    pub rx_bytes: u64,
    /// Bytes sent to this peer.
    pub tx_bytes: u64,
}

/// Parsed `wg show IF dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDump {
    /// The interface's public key.
    pub public_key: String,
    /// Its listen port.
    pub listen_port: u16,
    /// Its peers, in the order printed.
    pub peers: Vec<PeerStatus>,
}

impl WgDump {
    /// Parses the dump format. Panics with the text if it is malformed (harness
    /// convention: fail loudly, with context).
    pub fn parse(text: &str) -> WgDump {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let head: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
        assert!(
            head.len() == 4,
            "malformed wg dump interface line in:\n{text}"
        );
        WgDump {
            public_key: head[1].to_owned(),
            listen_port: parse_field(head[2], "listen port", text),
            peers: lines.map(|l| parse_peer(l, text)).collect(),
        }
    }

    /// The peer with `public_key`; panics (showing the dump) if absent.
    pub fn peer(&self, public_key: &str) -> &PeerStatus {
        self.peers
            .iter()
            .find(|p| p.public_key == public_key)
            .unwrap_or_else(|| panic!("peer {public_key} not in {self:#?}"))
    }
}

fn parse_peer(line: &str, text: &str) -> PeerStatus {
    let f: Vec<&str> = line.split('\t').collect();
    assert!(
        f.len() == 8,
        "malformed wg dump peer line {line:?} in:\n{text}"
    );
    let none_if = |s: &str| (s != "(none)").then(|| s.to_owned());
    PeerStatus {
        public_key: f[0].to_owned(),
        endpoint: none_if(f[2]),
        allowed_ips: f[3]
            .split(',')
            .filter(|s| *s != "(none)" && !s.is_empty())
            .map(str::to_owned)
            .collect(),
        latest_handshake: parse_field(f[4], "latest handshake", text),
        rx_bytes: parse_field(f[5], "rx bytes", text),
        tx_bytes: parse_field(f[6], "tx bytes", text),
    }
}

fn parse_field<T: std::str::FromStr>(s: &str, what: &str, text: &str) -> T {
    s.parse()
        .unwrap_or_else(|_| panic!("bad {what} {s:?} in wg dump:\n{text}"))
}

/// A wg config (`wg showconf` / `setconf` format) in canonical form, for comparisons
/// modulo ordering: one line per `key = value`, keys lower-cased, `AllowedIPs` split
/// into one entry per prefix, sections sorted (`[Interface]` first, then peers by
/// public key), keys sorted within a section, comments and blank lines dropped.
pub fn normalize_conf(text: &str) -> Vec<String> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            sections.push((line.to_ascii_lowercase(), Vec::new()));
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let key = key.trim().to_ascii_lowercase();
        let Some((_, entries)) = sections.last_mut() else {
            continue;
        };
        for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            entries.push(format!("{key} = {v}"));
        }
    }
    for (_, entries) in &mut sections {
        entries.sort();
    }
    let sort_key = |(head, entries): &(String, Vec<String>)| {
        let pk = entries.iter().find(|e| e.starts_with("publickey = "));
        (head != "[interface]", pk.cloned().unwrap_or_default())
    };
    sections.sort_by_key(sort_key);
    sections
        .into_iter()
        .flat_map(|(head, entries)| std::iter::once(head).chain(entries))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "priv\tpubA\t51820\toff\n\
        pubB\t(none)\t10.77.1.2:51821\t10.99.0.2/32,fd99::2/128\t1700000000\t1234\t5678\toff\n\
        pubC\t(none)\t(none)\t(none)\t0\t0\t0\t25\n";

    #[test]
    fn parses_dump() {
        let d = WgDump::parse(DUMP);
        assert_eq!(d.public_key, "pubA");
        assert_eq!(d.listen_port, 51820);
        let b = d.peer("pubB");
        assert_eq!(b.endpoint.as_deref(), Some("10.77.1.2:51821"));
        assert_eq!(b.allowed_ips, ["10.99.0.2/32", "fd99::2/128"]);
        assert_eq!(
            (b.latest_handshake, b.rx_bytes, b.tx_bytes),
            (1700000000, 1234, 5678)
        );
        let c = d.peer("pubC");
        assert_eq!(c.endpoint, None);
        assert!(c.allowed_ips.is_empty());
        assert_eq!(c.latest_handshake, 0);
    }

    #[test]
    #[should_panic(expected = "malformed wg dump peer line")]
    fn rejects_short_peer_line() {
        WgDump::parse("a\tb\t1\toff\npub\t(none)\n");
    }

    #[test]
    fn normalization_ignores_order_and_case() {
        let a = "[Interface]\nPrivateKey = k\nListenPort = 1\n\n[Peer]\nPublicKey = B\n\
                 AllowedIPs = 10.0.0.0/8, fd00::/8\n[Peer]\nPublicKey = A\nEndpoint = 1.2.3.4:5\n";
        let b = "[Peer]\npublickey = A\nendpoint = 1.2.3.4:5\n[Interface]\nListenPort = 1\n\
                 PrivateKey = k\n[Peer]\nAllowedIPs = fd00::/8\nAllowedIPs = 10.0.0.0/8\nPublicKey = B\n";
        assert_eq!(normalize_conf(a), normalize_conf(b));
        assert_eq!(normalize_conf(a)[0], "[interface]");
    }

    #[test]
    fn normalization_sees_differences() {
        let a = "[Interface]\nListenPort = 1\n[Peer]\nPublicKey = A\nAllowedIPs = 10.0.0.0/8\n";
        let b = "[Interface]\nListenPort = 1\n[Peer]\nPublicKey = A\nAllowedIPs = 10.0.0.0/9\n";
        assert_ne!(normalize_conf(a), normalize_conf(b));
        let c = "[Interface]\nListenPort = 1\n";
        assert_ne!(normalize_conf(a), normalize_conf(c));
    }

    #[test]
    fn wg_set_args_in_order() {
        let p = Peer::new("PK", &["10.99.0.2/32", "fd99::2/128"])
            .endpoint("10.77.1.2:51821".parse().unwrap())
            .keepalive(25);
        let args = p.wg_set_args(Some(Path::new("/tmp/psk")));
        assert_eq!(
            args.join(" "),
            "peer PK preshared-key /tmp/psk endpoint 10.77.1.2:51821 \
             persistent-keepalive 25 allowed-ips 10.99.0.2/32,fd99::2/128"
        );
    }
}
