//! `portdistrict device ...`: this machine's device of the identity and the roster the
//! master record publishes. Files (atomic writes):
//!
//! - `STATE_DIR/device.json` (0600): this device's name and seed;
//! - `STATE_DIR/roster.json`: the delegations (devices) the master record lists.

use crate::identity::PublicIdentity;
use crate::node::{unlock, Secret, SecretOptions};
use crate::records::{subnet_of, Delegation, DeviceKeys, DevicePublic};
use crate::Dirs;
use anyhow::{bail, Context as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use portdistrict_exitnode::state::{write_atomic, write_atomic_mode};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::PathBuf;

/// `device.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeviceFile {
    name: String,
    seed: String,
    /// The namespace asked for by `device request` (before `device join`).
    #[serde(default)]
    namespace: Option<String>,
}

/// One roster entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    /// Device name.
    pub name: String,
    /// Signing public key, base64url.
    pub signing: String,
    /// ECDH public key, base64url.
    pub ecdh: String,
    /// The master's delegation signature, base64url.
    pub signature: String,
}

fn b32(v: &str, what: &str) -> anyhow::Result<[u8; 32]> {
    URL_SAFE_NO_PAD
        .decode(v)
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("roster: {what} is damaged"))
}

impl RosterEntry {
    fn from_delegation(d: &Delegation) -> RosterEntry {
        RosterEntry {
            name: d.device.name.clone(),
            signing: URL_SAFE_NO_PAD.encode(d.device.signing),
            ecdh: URL_SAFE_NO_PAD.encode(d.device.ecdh),
            signature: URL_SAFE_NO_PAD.encode(d.signature),
        }
    }

    /// Back to a delegation.
    pub fn delegation(&self) -> anyhow::Result<Delegation> {
        let sig = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .context("roster: a signature is damaged")?;
        Ok(Delegation {
            device: DevicePublic {
                name: self.name.clone(),
                signing: b32(&self.signing, "a signing key")?,
                ecdh: b32(&self.ecdh, "an ECDH key")?,
            },
            signature: sig,
        })
    }
}

fn device_path(dirs: &Dirs) -> PathBuf {
    dirs.state.join("device.json")
}

fn roster_path(dirs: &Dirs) -> PathBuf {
    dirs.state.join("roster.json")
}

/// This machine's device: its name and keys.
pub fn this_device(dirs: &Dirs) -> anyhow::Result<(String, DeviceKeys)> {
    let path = device_path(dirs);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no device on this machine yet: run `portdistrict device init --name NAME`")
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let f: DeviceFile =
        serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))?;
    let seed = b32(&f.seed, "the device seed")?;
    Ok((f.name, DeviceKeys::from_seed(seed)))
}

/// The roster (the delegations the master record lists).
pub fn roster(dirs: &Dirs) -> anyhow::Result<Vec<RosterEntry>> {
    let path = roster_path(dirs);
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("{} is damaged", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_roster(dirs: &Dirs, r: &[RosterEntry]) -> anyhow::Result<()> {
    let path = roster_path(dirs);
    write_atomic(&path, serde_json::to_string_pretty(r)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// `device init --name NAME`: makes this machine's device and delegates it.
pub fn init(dirs: &Dirs, name: &str, o: &SecretOptions) -> anyhow::Result<String> {
    if device_path(dirs).exists() {
        bail!(
            "this machine already has a device ({}); `portdistrict device list` shows it",
            device_path(dirs).display()
        );
    }
    let (rec, seed) = unlock(dirs, o)?;
    let keys = {
        use ring::rand::SecureRandom as _;
        let mut s = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut s)
            .map_err(|_| anyhow::anyhow!("no randomness for the device seed"))?;
        DeviceKeys::from_seed(s)
    };
    let public = keys.public(name);
    let d = Delegation::sign(&seed.master(), &rec.identity.namespace, public);
    // Checks the name (one DNS label) the way readers will.
    crate::records::MasterRecord {
        namespace: rec.identity.namespace.clone(),
        issued: 0,
        expires: 1,
        devices: vec![d.clone()],
    }
    .sign(&seed.master())
    .map_err(|e| anyhow::anyhow!("device name {name:?}: {e}"))?;
    let mut r = roster(dirs)?;
    if r.iter().any(|e| e.name == name) {
        bail!("the roster already has a device {name:?}: choose another name");
    }
    let file = DeviceFile {
        name: name.to_owned(),
        seed: URL_SAFE_NO_PAD.encode(keys.seed()),
        namespace: None,
    };
    write_atomic_mode(
        &device_path(dirs),
        serde_json::to_string_pretty(&file)?.as_bytes(),
        0o600,
    )
    .with_context(|| format!("writing {}", device_path(dirs).display()))?;
    r.push(RosterEntry::from_delegation(&d));
    save_roster(dirs, &r)?;
    Ok(describe(&rec.identity, name, &keys))
}

fn describe(id: &PublicIdentity, name: &str, keys: &DeviceKeys) -> String {
    let wg = portdistrict_wg::PrivateKey::from_bytes(keys.wireguard()).public_key();
    let mut s = String::new();
    let _ = writeln!(s, "device:    {name}.{}", id.namespace);
    let _ = writeln!(s, "overlay:   {}/64", id.device_prefix(subnet_of(name)));
    let _ = writeln!(s, "wireguard: {}", wg.to_base64());
    s
}

/// `device list [--json]`.
pub fn list(dirs: &Dirs, json: bool) -> anyhow::Result<String> {
    let rec = crate::node::record(dirs)?;
    if json {
        let this = this_device(dirs).ok().map(|(name, keys)| {
            let wg = portdistrict_wg::PrivateKey::from_bytes(keys.wireguard()).public_key();
            serde_json::json!({
                "name": name,
                "overlay_prefix": format!("{}/64", rec.identity.device_prefix(subnet_of(&name))),
                "wireguard_key": wg.to_base64(),
            })
        });
        let roster: Vec<_> = roster(dirs)?
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "overlay_prefix": format!("{}/64", rec.identity.device_prefix(subnet_of(&e.name))),
                })
            })
            .collect();
        let v = serde_json::json!({ "this_device": this, "roster": roster });
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut s = String::new();
    match this_device(dirs) {
        Ok((name, keys)) => {
            let _ = writeln!(s, "this machine:");
            for l in describe(&rec.identity, &name, &keys).lines() {
                let _ = writeln!(s, "  {l}");
            }
        }
        Err(_) => {
            let _ = writeln!(
                s,
                "this machine: no device (`portdistrict device init --name NAME`)"
            );
        }
    }
    let _ = writeln!(s, "roster:");
    for e in roster(dirs)? {
        let _ = writeln!(
            s,
            "  {}  {}/64",
            e.name,
            rec.identity.device_prefix(subnet_of(&e.name))
        );
    }
    Ok(s)
}

/// `device roster remove NAME`: the next publication no longer lists it.
pub fn roster_remove(dirs: &Dirs, name: &str) -> anyhow::Result<String> {
    let mut r = roster(dirs)?;
    let before = r.len();
    r.retain(|e| e.name != name);
    if r.len() == before {
        bail!("no device {name:?} in the roster (see `portdistrict device list`)");
    }
    save_roster(dirs, &r)?;
    Ok(format!(
        "{name} removed from the roster; it is unpublished at the next publication"
    ))
}

fn fresh_keys() -> anyhow::Result<DeviceKeys> {
    use ring::rand::SecureRandom as _;
    let mut s = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut s)
        .map_err(|_| anyhow::anyhow!("no randomness for the device seed"))?;
    Ok(DeviceKeys::from_seed(s))
}

/// `device request --name NAME --namespace NS`: on a machine without the identity's
/// secret, makes this device and prints the line to take to the machine that has it.
pub fn request(dirs: &Dirs, name: &str, namespace: &str) -> anyhow::Result<String> {
    crate::identity::check_namespace(namespace)?;
    if device_path(dirs).exists() {
        bail!(
            "this machine already has a device ({})",
            device_path(dirs).display()
        );
    }
    portdistrict_exitnode::state::private_dir(&dirs.state)
        .with_context(|| format!("creating {} (mode 0700)", dirs.state.display()))?;
    let keys = fresh_keys()?;
    let line = crate::records::DeviceRequest::encode(&keys, namespace, name)?;
    let file = DeviceFile {
        name: name.to_owned(),
        seed: URL_SAFE_NO_PAD.encode(keys.seed()),
        namespace: Some(namespace.to_owned()),
    };
    write_atomic_mode(
        &device_path(dirs),
        serde_json::to_string_pretty(&file)?.as_bytes(),
        0o600,
    )
    .with_context(|| format!("writing {}", device_path(dirs).display()))?;
    Ok(line)
}

/// `device roster add REQUEST`: on the machine with the identity's secret, delegates
/// the requesting device; returns the identity bundle for `device join` there. The
/// seed is unlocked with the CLI's options offline, or is the one `portdistrictd`
/// holds when it serves the command.
pub fn roster_add(dirs: &Dirs, request: &str, secret: Secret<'_>) -> anyhow::Result<String> {
    let req = crate::records::DeviceRequest::decode(request)?;
    secret.with_seed(dirs, |rec, seed| {
        if req.namespace != rec.identity.namespace {
            bail!(
                "the device asks to join {}, this identity is {}",
                req.namespace,
                rec.identity.namespace
            );
        }
        let mut r = roster(dirs)?;
        if r.iter().any(|e| e.name == req.device.name) {
            bail!("the roster already has a device {:?}", req.device.name);
        }
        let d = Delegation::sign(&seed.master(), &rec.identity.namespace, req.device);
        r.push(RosterEntry::from_delegation(&d));
        save_roster(dirs, &r)?;
        seed.bundle(&rec.identity.namespace, rec.created)
            .map_err(Into::into)
    })
}

/// `device join BUNDLE`: completes `device request` on the device.
pub fn join(dirs: &Dirs, bundle: &str) -> anyhow::Result<String> {
    let path = device_path(dirs);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no device here yet: run `portdistrict device request` first ({})",
            path.display()
        )
    })?;
    let f: DeviceFile =
        serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))?;
    let b = crate::identity::Bundle::decode(bundle)?;
    if f.namespace.as_deref() != Some(b.identity.namespace.as_str()) {
        bail!(
            "this device asked to join {:?}, the bundle is {}",
            f.namespace.unwrap_or_default(),
            b.identity.namespace
        );
    }
    let rec = crate::node::join(dirs, bundle, crate::exit::now())?;
    Ok(format!(
        "{}.{} joined; portdistrictd on this machine reads its roster and trust from DNS",
        f.name, rec.identity.namespace
    ))
}
