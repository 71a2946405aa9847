//! `portdistrict exit serve`: the provider process. It starts the dataplane on the
//! tunnel interface with the provider's WireGuard key, registers every authorized
//! consumer (its inner addresses) and every live invite's negotiation identity as
//! peers, addresses the tunnel (100.64.0.1/10), applies the provider plan (forwarding
//! and masquerade for authorized consumers only) and answers exit requests on
//! 100.64.0.1:51821 until SIGTERM or SIGINT, when it takes the plan back and deletes
//! the interface.
//!
//! An exit request is answered by [`negotiate::answer`]; on a grant the store is saved
//! first (a crash never forgets a grant it sent), then the consumer becomes a peer,
//! the firewall's consumer set is replaced, and only then is the ack sent.

use crate::exit::{now, ExitDir};
use crate::{uapi, Dirs};
use anyhow::{bail, Context as _};
use portdistrict_exitnode::apply::{apply_nft, apply_plan, undo_plan};
use portdistrict_exitnode::negotiate::{self, Answer};
use portdistrict_exitnode::policy::ProviderPolicy;
use portdistrict_exitnode::state::write_atomic;
use portdistrict_exitnode::store::Store;
use portdistrict_wg::uapi::{AllowedIpChange, PeerChange, SetRequest};
use portdistrict_wg::{PrivateKey, PublicKey};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The provider's own address inside the tunnel.
pub const PROVIDER_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// The UDP port of exit negotiation inside the tunnel.
pub const NEGOTIATION_PORT: u16 = 51821;

/// Options of `exit serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    uplink: String,
    interface: String,
    listen_port: u16,
}

impl ServeOptions {
    /// Parses `--uplink IFACE` (required), `--interface NAME` (default `pdexit0`),
    /// `--listen-port N` (default 51820).
    pub fn parse(opts: &[&str]) -> anyhow::Result<ServeOptions> {
        let mut o = ServeOptions {
            uplink: String::new(),
            interface: "pdexit0".to_owned(),
            listen_port: 51820,
        };
        let mut it = opts.iter();
        while let Some(&flag) = it.next() {
            let value = *it.next().with_context(|| format!("{flag} needs a value"))?;
            match flag {
                "--uplink" => o.uplink = value.to_owned(),
                "--interface" => o.interface = value.to_owned(),
                "--listen-port" => {
                    o.listen_port =
                        value.parse().ok().filter(|&p| p > 0).with_context(|| {
                            format!("--listen-port {value}: expected 1 to 65535")
                        })?
                }
                _ => bail!("exit serve: unknown option {flag}"),
            }
        }
        if o.uplink.is_empty() {
            bail!("exit serve needs --uplink IFACE: the interface towards the internet");
        }
        Ok(o)
    }
}

/// The dataplane binary: `PD_DATAPLANE`, else `portdistrict-dataplane` next to this
/// executable, else on the `PATH`.
fn dataplane_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PD_DATAPLANE") {
        return PathBuf::from(p);
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("portdistrict-dataplane")));
    sibling
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("portdistrict-dataplane"))
}

fn run(argv: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn key_of(base64: &str) -> anyhow::Result<PublicKey> {
    PublicKey::from_base64(base64)
        .map_err(|e| anyhow::anyhow!("bad key {base64:?} in the store: {e}"))
}

fn host(addr: IpAddr) -> AllowedIpChange {
    AllowedIpChange {
        addr,
        cidr: if addr.is_ipv4() { 32 } else { 128 },
        remove: false,
    }
}

/// The peers the store implies: consumers with their inner addresses, live invites'
/// negotiation identities with theirs.
fn peers_of(store: &Store, now: u64) -> anyhow::Result<Vec<PeerChange>> {
    let mut peers = Vec::new();
    for c in &store.consumers {
        let mut p = PeerChange::new(key_of(&c.wg_key)?);
        p.allowed_ips.push(host(IpAddr::V4(c.inner_v4)));
        if let Some(v6) = c.inner_v6 {
            p.allowed_ips.push(host(IpAddr::V6(v6)));
        }
        peers.push(p);
    }
    for i in store
        .invites
        .iter()
        .filter(|i| !i.revoked && i.uses_left > 0 && now < i.expires)
    {
        let mut p = PeerChange::new(key_of(&i.negotiation_key)?);
        p.allowed_ips.push(host(IpAddr::V4(i.negotiation_addr)));
        peers.push(p);
    }
    Ok(peers)
}

fn policy_of(o: &ServeOptions, store: &Store) -> ProviderPolicy {
    ProviderPolicy {
        tunnel: o.interface.clone(),
        uplink: o.uplink.clone(),
        consumers_v4: store.consumers.iter().map(|c| c.inner_v4).collect(),
        consumers_v6: Vec::new(),
        ipv6: false,
        negotiation_port: NEGOTIATION_PORT,
    }
}

/// Runs the provider until SIGTERM/SIGINT.
pub fn serve(dirs: &Dirs, o: &ServeOptions) -> anyhow::Result<()> {
    let dir = ExitDir::open(dirs)?;
    let wg = dir.wg_key()?;
    let mut store = dir.store()?;
    std::fs::create_dir_all(&dirs.run)
        .with_context(|| format!("creating {}", dirs.run.display()))?;
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term)).context("signal handler")?;
    }

    let bin = dataplane_binary();
    run(&[&bin.to_string_lossy(), &o.interface])
        .with_context(|| format!("starting the dataplane {}", bin.display()))?;
    let result = serve_running(dirs, o, &wg, &mut store, &dir, &term);
    // The interface goes in any case; the dataplane exits with it.
    let _ = run(&["ip", "link", "del", &o.interface]);
    result
}

fn serve_running(
    dirs: &Dirs,
    o: &ServeOptions,
    wg: &PrivateKey,
    store: &mut Store,
    dir: &ExitDir,
    term: &AtomicBool,
) -> anyhow::Result<()> {
    let sock_dir = Path::new(uapi::SOCKET_DIR);
    uapi::set(
        sock_dir,
        &o.interface,
        &SetRequest {
            private_key: Some(Some(wg.clone())),
            listen_port: Some(o.listen_port),
            fwmark: None,
            replace_peers: true,
            peers: peers_of(store, now())?,
        },
    )?;
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{PROVIDER_V4}/10"),
        "dev",
        &o.interface,
    ])?;
    run(&["ip", "link", "set", &o.interface, "up"])?;
    let plan = policy_of(o, store).plan()?;
    let undo = apply_plan(&plan, &[])?;
    let undo_path = dirs.run.join("exit-undo.json");
    write_atomic(&undo_path, serde_json::to_string(&undo)?.as_bytes())
        .with_context(|| format!("writing {}", undo_path.display()))?;
    eprintln!(
        "portdistrict: exit node up on {} (uplink {}, UDP {}), negotiation on {PROVIDER_V4}:{NEGOTIATION_PORT}",
        o.interface, o.uplink, o.listen_port
    );

    let result = answer_requests(o, store, dir, term);
    let restored = undo_plan(&undo, &[]);
    let _ = std::fs::remove_file(&undo_path);
    result.and(restored.map_err(Into::into))
}

fn answer_requests(
    o: &ServeOptions,
    store: &mut Store,
    dir: &ExitDir,
    term: &AtomicBool,
) -> anyhow::Result<()> {
    let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(PROVIDER_V4), NEGOTIATION_PORT))
        .context("binding the negotiation port")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let resolver = IpAddr::V4(PROVIDER_V4);
    let mut buf = [0u8; 512];
    while !term.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("negotiation socket"),
        };
        match negotiate::answer(store, now(), &buf[..n], resolver) {
            Answer::Ignore => {}
            Answer::Refuse { reply } => {
                let _ = sock.send_to(&reply, from);
            }
            Answer::Grant {
                wg_key,
                grant,
                reply,
            } => {
                dir.save(store)?;
                let mut p = PeerChange::new(key_of(&wg_key)?);
                p.allowed_ips.push(host(IpAddr::V4(grant.inner_v4)));
                uapi::set(
                    Path::new(uapi::SOCKET_DIR),
                    &o.interface,
                    &SetRequest {
                        private_key: None,
                        listen_port: None,
                        fwmark: None,
                        replace_peers: false,
                        peers: vec![p],
                    },
                )?;
                apply_nft(&policy_of(o, store).plan()?, &[])?;
                let _ = sock.send_to(&reply, from);
                eprintln!("portdistrict: authorized {wg_key} as {}", grant.inner_v4);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = ServeOptions::parse(&["--uplink", "eth0", "--listen-port", "4500"]).unwrap();
        assert_eq!(
            (o.uplink.as_str(), o.interface.as_str(), o.listen_port),
            ("eth0", "pdexit0", 4500)
        );
        assert!(ServeOptions::parse(&[])
            .unwrap_err()
            .to_string()
            .contains("--uplink"));
        assert!(ServeOptions::parse(&["--uplink", "e", "--listen-port", "0"]).is_err());
        assert!(ServeOptions::parse(&["--uplink", "e", "--what", "1"]).is_err());
    }

    #[test]
    fn peers_follow_the_store() {
        let mut s = Store::default();
        let neg = PrivateKey::from_bytes([3; 32]).public_key().to_base64();
        s.issue(&[1; 16], &neg, 1000, 1).unwrap();
        let consumer = PrivateKey::from_bytes([4; 32]).public_key().to_base64();
        s.authorize(10, &[1; 16], &consumer).unwrap();
        // Used up: only the consumer remains a peer.
        let peers = peers_of(&s, 20).unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].public_key.to_base64(), consumer);
        assert_eq!(peers[0].allowed_ips[0].cidr, 32);
        s.issue(&[2; 16], &neg, 1000, 1).unwrap();
        assert_eq!(peers_of(&s, 20).unwrap().len(), 2);
        assert_eq!(
            peers_of(&s, 1000).unwrap().len(),
            1,
            "expired invites are no peers"
        );
    }
}
