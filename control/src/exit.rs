//! The provider's offline exit commands: they read and write the exit state under
//! `STATE_DIR/exit/` (created 0700): `signing.pk8` (the Ed25519 key that signs
//! invites), `wg.key` (the provider's WireGuard private key), `noise.key` (its exit
//! channel's Noise static key, see [`attestation`]) and `store.json` (issued
//! invites and authorized consumers), all 0600 (an existing file or directory that
//! others may read is made private when the directory is opened). Every write is
//! atomic.

pub mod attestation;
pub(crate) mod frames;
mod options;
mod wg_quick;

use crate::Dirs;
pub use options::{InviteArgs, InviteOptions};
pub use wg_quick::{InviteFormat, WG_QUICK_WARNING};

/// The exit channel's TCP port invites name before `exit serve` recorded one (its
/// default: the default WireGuard port).
const DEFAULT_CHANNEL_PORT: u16 = 51820;

/// The longest `--expires` of an invite (ten years).
const MAX_EXPIRY: Duration = Duration::from_secs(3650 * 86_400);
use anyhow::{bail, Context as _};
use portdistrict_exitnode::invite::{Channel, Invite, Transport};
use portdistrict_exitnode::state::{private_dir, write_atomic, write_atomic_mode};
use portdistrict_exitnode::store::Store;
use portdistrict_wg::PrivateKey;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The exit state directory.
#[derive(Debug, Clone)]
pub(crate) struct ExitDir(PathBuf);

impl ExitDir {
    /// Creates the directory 0700 (and the state directory), or makes existing ones
    /// and their files private (0700, 0600).
    pub(crate) fn open(dirs: &Dirs) -> anyhow::Result<ExitDir> {
        let dir = dirs.state.join("exit");
        for d in [&dirs.state, &dir] {
            private_dir(d).with_context(|| format!("creating {} (mode 0700)", d.display()))?;
        }
        Ok(ExitDir(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The signing key, made on first use.
    fn signing_key(&self) -> anyhow::Result<Ed25519KeyPair> {
        let path = self.path("signing.pk8");
        if !path.exists() {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("generating the signing key failed"))?;
            write_atomic_mode(&path, doc.as_ref(), 0o600)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ed25519KeyPair::from_pkcs8(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is not an Ed25519 PKCS#8 key ({e}); restore it from backup",
                path.display()
            )
        })
    }

    /// The provider's Noise static key (the exit channel's), made on first use.
    pub(crate) fn noise_key(
        &self,
    ) -> anyhow::Result<portdistrict_exitnode::channel::NoiseSecretKey> {
        attestation::noise_key(&self.path("noise.key"))
    }

    /// The provider's WireGuard key, made on first use.
    pub(crate) fn wg_key(&self) -> anyhow::Result<PrivateKey> {
        crate::wg_key_file(&self.path("wg.key"))
    }

    /// Serializes read-modify-write of the store between the commands and a running
    /// `exit serve` (released when the file is dropped).
    pub(crate) fn lock(&self) -> anyhow::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.path("store.lock");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(f)
    }

    pub(crate) fn store(&self) -> anyhow::Result<Store> {
        let path = self.path("store.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is damaged; restore it from backup", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub(crate) fn save(&self, store: &Store) -> anyhow::Result<()> {
        let path = self.path("store.json");
        let text = serde_json::to_string_pretty(store)?;
        write_atomic(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `exit invite`: records a new invite and returns its line.
pub fn invite(dirs: &Dirs, o: &InviteOptions) -> anyhow::Result<String> {
    let dir = ExitDir::open(dirs)?;
    let _lock = dir.lock()?;
    let key = dir.signing_key()?;
    let wg = dir.wg_key()?;
    let mut store = dir.store()?;
    let endpoints = if o.endpoints.is_empty() {
        store.endpoints.clone()
    } else {
        o.endpoints.clone()
    };
    if endpoints.is_empty() {
        bail!("exit invite needs --endpoint HOST:PORT (where consumers reach this provider), or a provider started with `exit serve --endpoint HOST:PORT`");
    }
    let mut token = [0u8; 16];
    SystemRandom::new()
        .fill(&mut token)
        .map_err(|_| anyhow::anyhow!("no randomness for the token"))?;
    let expires = now()
        .checked_add(o.expires.as_secs())
        .context("--expires: the expiry does not fit the clock")?;
    let Some(()) = store.issue(&token, expires, o.uses) else {
        bail!("65,534 invites are on record: revoke or let some expire first");
    };
    let noise = dir.noise_key()?.public();
    let invite = Invite {
        transport: Transport::WireGuardUdp,
        wg_key: *wg.public_key().as_bytes(),
        signer: key
            .public_key()
            .as_ref()
            .try_into()
            .context("Ed25519 public keys are 32 bytes")?,
        token,
        channel: Some(Channel {
            noise_key: noise.0,
            port: store.channel_port.unwrap_or(DEFAULT_CHANNEL_PORT),
        }),
        pin: o.pin,
        expires,
        uses: o.uses,
        endpoints,
    };
    if o.format == InviteFormat::WgQuick {
        return wg_quick::config(&dir, &mut store, &invite, o.qr);
    }
    // Recorded before it is shown: an invite the store does not know is worthless.
    dir.save(&store)?;
    Ok(invite.encode(&key))
}

/// `exit attestation-data`: the report data this exit node's attestation report
/// must carry (it binds its Noise static key and its WireGuard key), for the
/// operator's tooling to request the report with; and the two keys.
pub fn attestation_data(dirs: &Dirs, json: bool) -> anyhow::Result<String> {
    let dir = ExitDir::open(dirs)?;
    let noise = dir.noise_key()?.public();
    let wg = dir.wg_key()?.public_key();
    let data = portdistrict_control_core::attest::binding(&noise.0, wg.as_bytes());
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let b64 = |k: &[u8; 32]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(k)
    };
    Ok(if json {
        serde_json::json!({
            "report_data": hex,
            "noise_public_key": b64(&noise.0),
            "wireguard_public_key": wg.to_base64(),
        })
        .to_string()
    } else {
        format!(
            "report data: {hex}\nnoise public key: {}\nwireguard public key: {}",
            b64(&noise.0),
            wg.to_base64()
        )
    })
}

/// `exit list`.
pub fn list(dirs: &Dirs, json: bool) -> anyhow::Result<String> {
    let store = ExitDir::open(dirs)?.store()?;
    let now = now();
    if json {
        let state = |i: &portdistrict_exitnode::store::Issued| {
            if i.revoked {
                "revoked"
            } else if now >= i.expires {
                "expired"
            } else if i.uses_left == 0 {
                "used_up"
            } else {
                "live"
            }
        };
        let invites: Vec<_> = store
            .invites
            .iter()
            .map(|i| {
                serde_json::json!({
                    "token": &i.token[..8.min(i.token.len())],
                    "state": state(i),
                    "uses_left": i.uses_left,
                    "expires": i.expires,
                })
            })
            .collect();
        let consumers: Vec<_> = store
            .consumers
            .iter()
            .map(|c| {
                serde_json::json!({
                    "wg_key": c.wg_key,
                    "inner_v4": c.inner_v4,
                    "inner_v6": c.inner_v6,
                })
            })
            .collect();
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(
                &serde_json::json!({"invites": invites, "consumers": consumers})
            )?
        ));
    }
    let mut out = String::new();
    let _ = writeln!(out, "invites: {}", store.invites.len());
    for i in &store.invites {
        let state = if i.revoked {
            "revoked".to_owned()
        } else if now >= i.expires {
            "expired".to_owned()
        } else if i.uses_left == 0 {
            "used up".to_owned()
        } else {
            format!(
                "{} use(s) left, expires in {}s",
                i.uses_left,
                i.expires - now
            )
        };
        let _ = writeln!(
            out,
            "  token {}...  {state}",
            &i.token[..8.min(i.token.len())]
        );
    }
    let _ = writeln!(out, "consumers: {}", store.consumers.len());
    for c in &store.consumers {
        let v6 = c.inner_v6.map(|a| format!(" {a}")).unwrap_or_default();
        let _ = writeln!(out, "  {}  {}{v6}", c.wg_key, c.inner_v4);
    }
    Ok(out)
}

/// `exit revoke CONSUMER|TOKEN`: a consumer by WireGuard public key or inner address,
/// or an invite by its token (at least the 8 hex digits `exit list` shows).
pub fn revoke(dirs: &Dirs, who: &str) -> anyhow::Result<String> {
    let dir = ExitDir::open(dirs)?;
    let _lock = dir.lock()?;
    let mut store = dir.store()?;
    let token = who.trim_end_matches('.');
    if token.len() >= 8 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
        let hits: Vec<usize> = (0..store.invites.len())
            .filter(|&i| {
                store.invites[i]
                    .token
                    .starts_with(&token.to_ascii_lowercase())
            })
            .collect();
        match hits.as_slice() {
            [i] => {
                store.invites[*i].revoked = true;
                dir.save(&store)?;
                return Ok(format!("invite {token}"));
            }
            [] => {}
            _ => bail!("{token} matches several invites: give more of the token"),
        }
    }
    let key = store
        .consumers
        .iter()
        .find(|c| {
            c.wg_key == who
                || c.inner_v4.to_string() == who
                || c.inner_v6.is_some_and(|a| a.to_string() == who)
        })
        .map(|c| c.wg_key.clone());
    let Some(key) = key else {
        bail!("no authorized consumer or invite {who:?}: give a consumer's WireGuard public key or inner address, or an invite's token (see `portdistrict exit list`)");
    };
    store.revoke(&key);
    dir.save(&store)?;
    Ok(key)
}

/// The exit directory of `dirs` (for tests).
#[cfg(test)]
fn exit_dir(dirs: &Dirs) -> PathBuf {
    dirs.state.join("exit")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(tag: &str) -> Dirs {
        let base = std::env::temp_dir().join(format!("pd-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        Dirs {
            state: base.join("state"),
            run: base.join("run"),
        }
    }

    fn cleanup(d: &Dirs) {
        if let Some(base) = d.state.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }

    #[test]
    fn invite_is_recorded_signed_and_decodable() {
        let d = dirs("invite");
        let o = InviteOptions::parse(&[
            "--endpoint",
            "192.0.2.1:51820",
            "--uses",
            "2",
            "--expires",
            "1h",
        ])
        .unwrap();
        let line = invite(&d, &o).unwrap();
        let inv = Invite::decode(&line).unwrap();
        assert_eq!(inv.endpoints, ["192.0.2.1:51820".parse().unwrap()]);
        assert_eq!(inv.uses, 2);
        let wg = ExitDir::open(&d).unwrap().wg_key().unwrap();
        assert_eq!(&inv.wg_key, wg.public_key().as_bytes());
        // Same keys the second time; a new token.
        let again = Invite::decode(&invite(&d, &o).unwrap()).unwrap();
        assert_eq!((again.signer, again.wg_key), (inv.signer, inv.wg_key));
        assert_ne!(again.token, inv.token);
        let store = ExitDir::open(&d).unwrap().store().unwrap();
        assert_eq!(store.invites.len(), 2);
        // Both name the exit channel: this node's Noise key, the default port before
        // `exit serve` recorded one; no pin unless asked.
        let noise = ExitDir::open(&d).unwrap().noise_key().unwrap().public();
        for i in [&inv, &again] {
            let c = i.channel.unwrap();
            assert_eq!((c.noise_key, c.port), (noise.0, DEFAULT_CHANNEL_PORT));
            assert_eq!(i.pin, None);
        }
        let pinned = InviteOptions::parse(&[
            "--endpoint",
            "192.0.2.1:51820",
            "--measurement",
            &"3e".repeat(48),
            "--min-abi",
            "1.51",
            "--smt",
            "forbidden",
        ])
        .unwrap();
        let p = Invite::decode(&invite(&d, &pinned).unwrap())
            .unwrap()
            .pin
            .unwrap();
        assert_eq!(p.measurement, [0x3e; 48]);
        assert_eq!(p.min_abi, (1, 51));
        assert_eq!(p.smt, portdistrict_control_core::attest::Smt::Forbidden);
        // And through the control socket's form.
        assert_eq!(
            InviteOptions::pin_of(pinned.pin_request().as_ref()).unwrap(),
            pinned.pin
        );
        let e = InviteOptions::parse(&["--smt", "forbidden"]).unwrap_err();
        assert!(e.to_string().contains("need --measurement"), "{e}");
        assert!(list(&d, false).unwrap().contains("2 use(s) left"));
        let j: serde_json::Value = serde_json::from_str(&list(&d, true).unwrap()).unwrap();
        assert_eq!(j["invites"].as_array().unwrap().len(), 3);
        assert_eq!(j["invites"][0]["state"], "live");
        assert_eq!(j["invites"][0]["uses_left"], 2);
        assert_eq!(j["invites"][0]["token"].as_str().unwrap().len(), 8);
        assert_eq!(j["consumers"].as_array().unwrap().len(), 0);
        assert_eq!(store.invites.len(), 2);
        use std::os::unix::fs::PermissionsExt as _;
        for secret in ["signing.pk8", "wg.key"] {
            let m = std::fs::metadata(exit_dir(&d).join(secret)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{secret}");
        }
        cleanup(&d);
    }

    fn inv_token_prefix(inv: &Invite) -> String {
        inv.token[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_wg_quick_invite_is_an_authorized_clients_config() {
        let d = dirs("wgquick");
        let o = InviteOptions::parse(&["--endpoint", "192.0.2.1:51820", "--format", "wg-quick"])
            .unwrap();
        let conf = invite(&d, &o).unwrap();
        assert!(conf.starts_with(WG_QUICK_WARNING), "{conf}");
        assert!(conf.contains("NO KILL SWITCH"), "{conf}");
        let field = |name: &str| {
            conf.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} = ")))
                .unwrap_or_else(|| panic!("no {name} in {conf}"))
                .to_owned()
        };
        let key = PrivateKey::from_base64(&field("PrivateKey")).unwrap();
        assert_eq!(field("Address"), "100.64.0.2/32");
        assert_eq!(field("DNS"), "100.64.0.1");
        assert_eq!(field("Endpoint"), "192.0.2.1:51820");
        assert_eq!(field("AllowedIPs"), "0.0.0.0/0");
        let dir = ExitDir::open(&d).unwrap();
        assert_eq!(
            field("PublicKey"),
            dir.wg_key().unwrap().public_key().to_base64()
        );
        // Authorized at once, by its public key; the invite behind it is used up.
        let store = dir.store().unwrap();
        assert_eq!(store.consumers.len(), 1);
        assert_eq!(store.consumers[0].wg_key, key.public_key().to_base64());
        assert_eq!(store.invites[0].uses_left, 0);
        // With IPv6 offered, the client gets an address and all of IPv6 too; --qr adds
        // a code.
        let mut store = dir.store().unwrap();
        store.v6_prefix = Some("fd7a:115c:a1e0::".parse().unwrap());
        dir.save(&store).unwrap();
        let o = InviteOptions::parse(&[
            "--endpoint",
            "192.0.2.1:51820",
            "--format",
            "wg-quick",
            "--qr",
        ])
        .unwrap();
        let out = invite(&d, &o).unwrap();
        assert!(
            out.contains("Address = 100.64.0.3/32, fd7a:115c:a1e0::3/128"),
            "{out}"
        );
        assert!(out.contains("AllowedIPs = 0.0.0.0/0, ::/0"), "{out}");
        let (_, code) = out
            .split_once("PersistentKeepalive = 25\n\n")
            .expect("a QR code after the config");
        assert!(code.lines().count() > 20, "{code}");
        assert!(code.chars().any(|c| "█▀▄".contains(c)), "{code}");
        cleanup(&d);
    }

    #[test]
    fn revoke_by_key_or_address_and_unknown_is_an_error() {
        let d = dirs("revoke");
        let o = InviteOptions::parse(&["--endpoint", "192.0.2.1:51820", "--uses", "2"]).unwrap();
        let inv = Invite::decode(&invite(&d, &o).unwrap()).unwrap();
        let dir = ExitDir::open(&d).unwrap();
        let mut store = dir.store().unwrap();
        let g = store.authorize(now(), &inv.token, "keyA").unwrap();
        store.authorize(now(), &inv.token, "keyB").unwrap();
        dir.save(&store).unwrap();
        assert_eq!(revoke(&d, "keyA").unwrap(), "keyA");
        assert!(revoke(&d, "keyA").is_err(), "already revoked");
        let b_addr = dir.store().unwrap().consumers[0].inner_v4;
        assert_ne!(b_addr, g.inner_v4);
        assert_eq!(revoke(&d, &b_addr.to_string()).unwrap(), "keyB");
        // An invite by the token prefix `exit list` shows.
        assert_eq!(
            revoke(&d, &inv_token_prefix(&inv)).unwrap(),
            format!("invite {}", inv_token_prefix(&inv))
        );
        assert!(dir.store().unwrap().invites[0].revoked);
        assert!(list(&d, false).unwrap().contains("revoked"));
        let e = revoke(&d, "nobody").unwrap_err();
        assert!(e.to_string().contains("exit list"), "{e}");
        cleanup(&d);
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        for (opts, needle) in [
            (&["--endpoint", "nonsense"][..], "HOST:PORT"),
            (&["--endpoint", "192.0.2.1:1", "--uses", "0"][..], "--uses"),
            (
                &["--endpoint", "192.0.2.1:1", "--expires", "1y"][..],
                "unit",
            ),
            (
                &["--endpoint", "192.0.2.1:1", "--bogus", "1"][..],
                "--bogus",
            ),
            (&["--endpoint"][..], "a value is required"),
            (
                &[
                    "--endpoint",
                    "192.0.2.1:1",
                    "--expires",
                    "18446744073709551615d",
                ][..],
                "--expires: duration \"18446744073709551615d\" is too long: at most 3650d",
            ),
            (
                &["--endpoint", "192.0.2.1:1", "--expires", "3651d"][..],
                "too long",
            ),
            (&["--format", "qr"][..], "expected line or wg-quick"),
            (&["--format", "wg-quick", "--uses", "2"][..], "no --uses"),
            (
                &["--format", "wg-quick", "--measurement", &"3e".repeat(48)][..],
                "no --measurement",
            ),
            (&["--qr"][..], "goes with --format wg-quick"),
        ] {
            let e = InviteOptions::parse(opts).unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{opts:?}: {e:#}");
        }
    }

    #[test]
    fn without_endpoints_invite_says_where_to_give_one() {
        let d = dirs("noendpoint");
        let o = InviteOptions::parse(&[]).unwrap();
        let e = invite(&d, &o).unwrap_err();
        assert!(format!("{e:#}").contains("--endpoint"), "{e:#}");
        let dir = ExitDir::open(&d).unwrap();
        let mut store = dir.store().unwrap();
        store.endpoints = vec!["192.0.2.9:4500".parse().unwrap()];
        dir.save(&store).unwrap();
        let inv = Invite::decode(&invite(&d, &o).unwrap()).unwrap();
        assert_eq!(inv.endpoints, store.endpoints);
        cleanup(&d);
    }

    #[test]
    fn a_damaged_store_is_refused_with_its_path() {
        let d = dirs("damaged");
        let dir = ExitDir::open(&d).unwrap();
        std::fs::write(dir.path("store.json"), "{not json").unwrap();
        let e = list(&d, false).unwrap_err();
        assert!(format!("{e:#}").contains("store.json"), "{e:#}");
        cleanup(&d);
    }
}
