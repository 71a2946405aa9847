//! `portdistrict identity ...` and `portdistrict peer ...`: the shell around
//! [`crate::identity`] and [`crate::trust`]. Files, all written atomically:
//!
//! - `STATE_DIR/identity/identity.json`: namespace, public keys, where the secret is;
//! - `STATE_DIR/identity/seed.json` (0600): the seed sealed under the passphrase
//!   (argon2id + ChaCha20-Poly1305), or, with `--key-file F`, the seed unencrypted in F
//!   (0600) for headless servers;
//! - `STATE_DIR/peers.json`: the peer store, changed under a lock; a damaged store is
//!   reported with its path and never overwritten.

use crate::identity::{Bundle, KdfParams, PublicIdentity, SealedSeed, Seed};
use crate::trust::{Added, PeerStore};
use crate::Dirs;
use anyhow::{bail, Context as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use portdistrict_exitnode::state::{write_atomic, write_atomic_mode};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const KEY_FILE_PREFIX: &str = "portdistrict-seed1:";

/// Where the seed is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretAt {
    /// Sealed under a passphrase in `identity/seed.json`.
    Sealed,
    /// Unencrypted in this file.
    KeyFile(PathBuf),
    /// On another device: this machine is a device of the identity without its seed
    /// (`device request` + `device join`).
    Elsewhere,
}

/// `identity/identity.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// The public identity.
    pub identity: PublicIdentity,
    /// When it was made.
    pub created: u64,
    /// Where its seed is.
    pub secret: SecretAt,
}

/// How the secret is unlocked or protected.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecretOptions {
    /// `--passphrase-file F`.
    pub passphrase_file: Option<PathBuf>,
    /// `--key-file F` (init only).
    pub key_file: Option<PathBuf>,
}

/// `--passphrase-file FILE`: how to unlock the identity's seed.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PassphraseArg {
    /// Read the passphrase from the first line of FILE instead of asking on the
    /// terminal
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

impl From<PassphraseArg> for SecretOptions {
    fn from(a: PassphraseArg) -> SecretOptions {
        SecretOptions {
            passphrase_file: a.passphrase_file,
            key_file: None,
        }
    }
}

/// `identity init`'s secret: a passphrase, or an unencrypted key file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InitSecretArgs {
    /// Seal the seed under the passphrase on the first line of FILE instead of asking
    /// on the terminal
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Keep the seed unencrypted in FILE (mode 0600), for headless servers
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_file")]
    pub key_file: Option<PathBuf>,
}

impl From<InitSecretArgs> for SecretOptions {
    fn from(a: InitSecretArgs) -> SecretOptions {
        SecretOptions {
            passphrase_file: a.passphrase_file,
            key_file: a.key_file,
        }
    }
}

fn dir(dirs: &Dirs) -> PathBuf {
    dirs.state.join("identity")
}

fn make_dir(d: &Path) -> anyhow::Result<()> {
    portdistrict_exitnode::state::private_dir(d)
        .with_context(|| format!("creating {} (mode 0700)", d.display()))
}

/// The passphrase from `--passphrase-file` (its first line) or the terminal.
fn passphrase(o: &SecretOptions, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    let p = if let Some(f) = &o.passphrase_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        );
        Zeroizing::new(text.lines().next().unwrap_or_default().to_owned())
    } else {
        let ask = |prompt: &str| {
            rpassword::prompt_password(prompt).map(Zeroizing::new).map_err(|e| {
                anyhow::anyhow!("no terminal to ask for the passphrase ({e}): use --passphrase-file FILE, or --key-file FILE at init")
            })
        };
        let p = ask("passphrase: ")?;
        if confirm && *ask("passphrase again: ")? != *p {
            bail!("the passphrases differ; nothing was written");
        }
        p
    };
    if p.is_empty() {
        bail!("the passphrase is empty: choose one, or use --key-file FILE for an unencrypted key");
    }
    Ok(p)
}

/// `identity init --namespace NS`.
pub fn init(dirs: &Dirs, namespace: &str, o: &SecretOptions, now: u64) -> anyhow::Result<String> {
    crate::identity::check_namespace(namespace)?;
    let d = dir(dirs);
    let record_path = d.join("identity.json");
    if record_path.exists() {
        bail!(
            "an identity exists already in {}; `portdistrict identity show` shows it (delete that directory to start over: your peers will no longer recognise you)",
            d.display()
        );
    }
    make_dir(&d)?;
    let seed = Seed::generate(&mut rand_core::OsRng);
    let secret = match &o.key_file {
        Some(f) => {
            let line = Zeroizing::new(format!(
                "{KEY_FILE_PREFIX}{}\n",
                URL_SAFE_NO_PAD.encode(seed.as_bytes())
            ));
            write_atomic_mode(f, line.as_bytes(), 0o600)
                .with_context(|| format!("writing {}", f.display()))?;
            SecretAt::KeyFile(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone()))
        }
        None => {
            let pass = passphrase(o, true)?;
            let sealed = SealedSeed::seal(
                &seed,
                pass.as_bytes(),
                KdfParams::DEFAULT,
                &mut rand_core::OsRng,
            )?;
            let path = d.join("seed.json");
            write_atomic_mode(
                &path,
                serde_json::to_string_pretty(&sealed)?.as_bytes(),
                0o600,
            )
            .with_context(|| format!("writing {}", path.display()))?;
            SecretAt::Sealed
        }
    };
    let record = IdentityRecord {
        identity: seed.public(namespace)?,
        created: now,
        secret,
    };
    // Written last: an identity exists only once its secret is safely stored.
    write_atomic(
        &record_path,
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )
    .with_context(|| format!("writing {}", record_path.display()))?;
    Ok(show_text(&record))
}

/// The identity record; a clear error when there is none.
pub fn record(dirs: &Dirs) -> anyhow::Result<IdentityRecord> {
    let path = dir(dirs).join("identity.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no identity yet in {}: run `portdistrict identity init --namespace NAME`",
            dirs.state.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged; restore it from backup", path.display()))
}

/// The seed, unlocked.
pub fn unlock(dirs: &Dirs, o: &SecretOptions) -> anyhow::Result<(IdentityRecord, Seed)> {
    let rec = record(dirs)?;
    let seed = match &rec.secret {
        SecretAt::KeyFile(f) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading the key file {}", f.display()))?,
            );
            let b64 = text
                .trim()
                .strip_prefix(KEY_FILE_PREFIX)
                .with_context(|| format!("{} is not a portdistrict key file", f.display()))?;
            let raw = Zeroizing::new(
                URL_SAFE_NO_PAD
                    .decode(b64)
                    .ok()
                    .with_context(|| format!("{} is damaged", f.display()))?,
            );
            let bytes: [u8; 32] = raw
                .as_slice()
                .try_into()
                .ok()
                .with_context(|| format!("{} is damaged", f.display()))?;
            Seed::from_bytes(bytes)
        }
        SecretAt::Elsewhere => return Err(not_held(&rec)),
        SecretAt::Sealed => {
            let path = dir(dirs).join("seed.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let sealed: SealedSeed = serde_json::from_str(&text).with_context(|| {
                format!("{} is damaged; restore it from backup", path.display())
            })?;
            let pass = passphrase(o, false)?;
            sealed.open(pass.as_bytes())?
        }
    };
    if seed.public(&rec.identity.namespace)? != rec.identity {
        bail!("the secret does not belong to this identity (identity.json and the seed disagree)");
    }
    Ok((rec, seed))
}

/// Why a machine that holds only a device of the identity cannot sign for it.
fn not_held(rec: &IdentityRecord) -> anyhow::Error {
    anyhow::anyhow!(
        "this machine holds only a device of {}, not the identity's secret: run this on the machine that does",
        rec.identity.namespace
    )
}

/// Where a command that signs for the identity (`device roster add`) gets its seed.
#[derive(Clone, Copy)]
pub enum Secret<'a> {
    /// Unlocked here, when needed, with the CLI's options ([`unlock`]).
    Unlock(&'a SecretOptions),
    /// Held in memory by `portdistrictd`, unlocked at its start; `None` on a machine
    /// that does not hold it.
    Held(Option<&'a Seed>),
}

impl Secret<'_> {
    /// Runs `f` with the identity's record and seed; without the seed, the same error
    /// either way ([`unlock`]'s).
    pub fn with_seed<T>(
        self,
        dirs: &Dirs,
        f: impl FnOnce(&IdentityRecord, &Seed) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        match self {
            Secret::Unlock(o) => {
                let (rec, seed) = unlock(dirs, o)?;
                f(&rec, &seed)
            }
            Secret::Held(Some(seed)) => f(&record(dirs)?, seed),
            Secret::Held(None) => Err(not_held(&record(dirs)?)),
        }
    }
}

fn show_text(r: &IdentityRecord) -> String {
    let id = &r.identity;
    let mut s = String::new();
    let _ = writeln!(s, "node ID:     {}", id.node_id());
    let _ = writeln!(s, "namespace:   {}", id.namespace);
    let _ = writeln!(s, "fingerprint: {}", id.fingerprint());
    let _ = writeln!(s, "overlay:     {}/48", id.overlay_prefix());
    let _ = writeln!(
        s,
        "secret:      {}",
        match &r.secret {
            SecretAt::Sealed => "sealed under a passphrase".to_owned(),
            SecretAt::KeyFile(f) => format!("unencrypted in {}", f.display()),
            SecretAt::Elsewhere =>
                "on another device (this machine is one of its devices)".to_owned(),
        }
    );
    s
}

/// `device join BUNDLE`: this machine (with a device from `device request`) becomes a
/// device of the identity in the bundle, without its secret.
pub fn join(dirs: &Dirs, bundle: &str, now: u64) -> anyhow::Result<IdentityRecord> {
    let d = dir(dirs);
    if d.join("identity.json").exists() {
        bail!(
            "this machine already has an identity ({}): `portdistrict identity show`",
            d.display()
        );
    }
    let b = Bundle::decode(bundle)?;
    make_dir(&d)?;
    let rec = IdentityRecord {
        identity: b.identity,
        created: now,
        secret: SecretAt::Elsewhere,
    };
    let path = d.join("identity.json");
    write_atomic(&path, serde_json::to_string_pretty(&rec)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(rec)
}

/// `identity show [--json]`.
pub fn show(dirs: &Dirs, json: bool) -> anyhow::Result<String> {
    let r = record(dirs)?;
    if json {
        let v = serde_json::json!({
            "node_id": r.identity.node_id(),
            "namespace": r.identity.namespace,
            "fingerprint": r.identity.fingerprint(),
            "overlay_prefix": format!("{}/48", r.identity.overlay_prefix()),
            "created": r.created,
        });
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    Ok(show_text(&r))
}

/// `identity bundle`.
pub fn bundle(dirs: &Dirs, o: &SecretOptions) -> anyhow::Result<String> {
    let (rec, seed) = unlock(dirs, o)?;
    Ok(seed.bundle(&rec.identity.namespace, rec.created)?)
}

fn peers_path(dirs: &Dirs) -> PathBuf {
    dirs.state.join("peers.json")
}

/// Loads the store (empty when missing); a damaged store is an error.
pub fn load_peers(dirs: &Dirs) -> anyhow::Result<PeerStore> {
    let path = peers_path(dirs);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged: it is left as it is; restore it from backup or move it away",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PeerStore::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Runs `change` on the store under its lock and saves it atomically if it succeeds.
pub fn change_peers<T>(
    dirs: &Dirs,
    change: impl FnOnce(&mut PeerStore) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    make_dir(&dirs.state)?;
    let lock_path = dirs.state.join("peers.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let mut store = load_peers(dirs)?;
    let out = change(&mut store)?;
    let path = peers_path(dirs);
    write_atomic(&path, serde_json::to_string_pretty(&store)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(out)
}

/// `peer add BUNDLE`.
pub fn peer_add(dirs: &Dirs, bundle: &str, now: u64) -> anyhow::Result<String> {
    let own = record(dirs)?.identity.node_id();
    let b = Bundle::decode(bundle)?;
    let id = b.identity;
    let added = change_peers(dirs, |s| Ok(s.add(&id, &own, now)?))?;
    let node = id.node_id();
    Ok(match added {
        Added::New => format!(
            "added {node} ({}) as SEEN; ask its owner for the fingerprint over another channel, then: portdistrict peer verify {node} --fingerprint FP",
            id.namespace
        ),
        Added::Known(st) => format!("{node} ({}) is already on record as {st}; nothing changed", id.namespace),
    })
}

/// `peer list [--json]`.
pub fn peer_list(dirs: &Dirs, json: bool) -> anyhow::Result<String> {
    let s = load_peers(dirs)?;
    if json {
        let v: Vec<_> = s.peers.iter().map(peer_json).collect();
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut out = String::new();
    if s.peers.is_empty() {
        out.push_str("no peers yet: `portdistrict peer add BUNDLE`\n");
    }
    for p in &s.peers {
        let _ = writeln!(
            out,
            "{:<9} {}  {}",
            p.state.name(),
            p.node_id,
            p.identity.namespace
        );
    }
    Ok(out)
}

fn peer_json(p: &crate::trust::Peer) -> serde_json::Value {
    serde_json::json!({
        "node_id": p.node_id,
        "namespace": p.identity.namespace,
        "state": p.state.name(),
        "fingerprint": p.identity.fingerprint(),
        "overlay_prefix": format!("{}/48", p.identity.overlay_prefix()),
        "added": p.added,
        "changed": p.changed,
    })
}

/// `peer show NODE [--json]`.
pub fn peer_show(dirs: &Dirs, who: &str, json: bool) -> anyhow::Result<String> {
    let s = load_peers(dirs)?;
    let p = &s.peers[s.find(who)?];
    if json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&peer_json(p))?
        ));
    }
    let mut out = String::new();
    let _ = writeln!(out, "node ID:     {}", p.node_id);
    let _ = writeln!(out, "namespace:   {}", p.identity.namespace);
    let _ = writeln!(out, "state:       {}", p.state);
    let _ = writeln!(out, "fingerprint: {}", p.identity.fingerprint());
    let _ = writeln!(out, "overlay:     {}/48", p.identity.overlay_prefix());
    Ok(out)
}

/// `peer verify|trust|demote|revoke|forget NODE`.
pub fn peer_change(
    dirs: &Dirs,
    verb: &str,
    who: &str,
    fingerprint: Option<&str>,
    now: u64,
) -> anyhow::Result<String> {
    change_peers(dirs, |s| {
        Ok(match verb {
            "verify" => {
                let fp = fingerprint.context("peer verify needs --fingerprint FP (the one its owner reads from `portdistrict identity show`)")?;
                let st = s.verify(who, fp, now)?;
                format!("{} is {st}", s.peers[s.find(who)?].node_id)
            }
            "trust" => {
                s.trust(who, now)?;
                format!("{} is TRUSTED", s.peers[s.find(who)?].node_id)
            }
            "demote" => {
                s.demote(who, now)?;
                format!("{} is VERIFIED", s.peers[s.find(who)?].node_id)
            }
            "revoke" => {
                s.revoke(who, now)?;
                format!("{} is REVOKED", s.peers[s.find(who)?].node_id)
            }
            "forget" => {
                let p = s.forget(who)?;
                format!(
                    "forgot {} ({}, was {})",
                    p.node_id, p.identity.namespace, p.state
                )
            }
            _ => bail!("unknown peer command {verb}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(tag: &str) -> Dirs {
        let base = std::env::temp_dir().join(format!("pd-node-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        Dirs {
            state: base.join("state"),
            run: base.join("run"),
        }
    }

    fn cleanup(d: &Dirs) {
        if let Some(b) = d.state.parent() {
            let _ = std::fs::remove_dir_all(b);
        }
    }

    fn key_file_identity(tag: &str, ns: &str) -> Dirs {
        let d = dirs(tag);
        std::fs::create_dir_all(&d.state).unwrap();
        let o = SecretOptions {
            passphrase_file: None,
            key_file: Some(d.state.join("seed.key")),
        };
        init(&d, ns, &o, 100).unwrap();
        d
    }

    #[test]
    fn two_people_exchange_bundles_verify_and_trust() {
        let alice = key_file_identity("alice", "alice.pd.test");
        let bob = key_file_identity("bob", "bob.pd.test");
        let none = SecretOptions::default();
        let bob_bundle = bundle(&bob, &none).unwrap();
        let bob_fp = record(&bob).unwrap().identity.fingerprint();
        let bob_node = record(&bob).unwrap().identity.node_id();
        assert!(peer_add(&alice, &bob_bundle, 1).unwrap().contains("SEEN"));
        assert!(peer_add(&alice, &bob_bundle, 2)
            .unwrap()
            .contains("nothing changed"));
        assert!(peer_change(&alice, "trust", &bob_node, None, 3).is_err());
        assert!(peer_change(&alice, "verify", &bob_node, Some("aaaa-bbbb"), 3).is_err());
        assert!(peer_change(&alice, "verify", &bob_node, Some(&bob_fp), 3)
            .unwrap()
            .ends_with("VERIFIED"));
        assert!(peer_change(&alice, "trust", "bob.pd.test", None, 4)
            .unwrap()
            .ends_with("TRUSTED"));
        let list: serde_json::Value =
            serde_json::from_str(&peer_list(&alice, true).unwrap()).unwrap();
        assert_eq!(list[0]["state"], "TRUSTED");
        assert_eq!(list[0]["node_id"], bob_node);
        assert!(peer_show(&alice, &bob_node[..8], false)
            .unwrap()
            .contains("bob.pd.test"));
        // Our own bundle is refused.
        let own = bundle(&alice, &none).unwrap();
        assert!(peer_add(&alice, &own, 5)
            .unwrap_err()
            .to_string()
            .contains("own"));
        cleanup(&alice);
        cleanup(&bob);
    }

    #[test]
    fn a_sealed_identity_needs_its_passphrase_and_init_refuses_twice() {
        let d = dirs("sealed");
        std::fs::create_dir_all(&d.state).unwrap();
        let pf = d.state.join("pass");
        std::fs::write(&pf, "s3cret\n").unwrap();
        let o = SecretOptions {
            passphrase_file: Some(pf.clone()),
            key_file: None,
        };
        // A cheap KDF is not possible through init (it always uses the default): this
        // test pays for one argon2id run at 64 MiB each way.
        let shown = init(&d, "carol.pd.test", &o, 1).unwrap();
        assert!(shown.contains("sealed under a passphrase"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir(&d).join("seed.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let line = bundle(&d, &o).unwrap();
        assert_eq!(
            Bundle::decode(&line).unwrap().identity,
            record(&d).unwrap().identity
        );
        std::fs::write(&pf, "wrong\n").unwrap();
        let e = bundle(&d, &o).unwrap_err();
        assert!(format!("{e:#}").contains("wrong passphrase"), "{e:#}");
        let e = init(&d, "carol.pd.test", &o, 2).unwrap_err();
        assert!(e.to_string().contains("exists already"), "{e}");
        cleanup(&d);
    }

    #[test]
    fn a_damaged_peer_store_is_reported_and_left_alone() {
        let d = key_file_identity("damaged", "dave.pd.test");
        std::fs::write(peers_path(&d), "{ not json").unwrap();
        let e = peer_list(&d, false).unwrap_err();
        assert!(format!("{e:#}").contains("peers.json is damaged"), "{e:#}");
        let bob = key_file_identity("damaged-bob", "bob.pd.test");
        let b = bundle(&bob, &SecretOptions::default()).unwrap();
        assert!(peer_add(&d, &b, 1).is_err());
        assert_eq!(
            std::fs::read_to_string(peers_path(&d)).unwrap(),
            "{ not json"
        );
        cleanup(&d);
        cleanup(&bob);
    }

    #[test]
    fn no_identity_says_how_to_make_one() {
        let d = dirs("none");
        let e = show(&d, false).unwrap_err();
        assert!(e.to_string().contains("identity init"), "{e}");
    }
}
