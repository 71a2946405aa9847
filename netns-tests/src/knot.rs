//! Knot DNS (`knotd`), a real authoritative server, inside a test namespace: one zone
//! with the records a test gives, served on UDP and TCP port 53 of one address.
//! Stopped (`knotc stop`, then SIGKILL) and its files removed on drop.

use crate::{wait_until, ChildGuard, Netns, TempDir};
use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

/// A TSIG key (HMAC-SHA256) that may update the zone: all of it (`owners` empty), or
/// only the TXT records at exactly `owners` (absolute names, without the final dot),
/// as Knot's `update-owner: name` with `update-owner-match: equal` does.
#[derive(Debug, Clone, Copy)]
pub struct UpdateKey<'a> {
    /// The key's name (`key: id`).
    pub name: &'a str,
    /// Its base64 secret.
    pub secret: &'a str,
    /// The only names it may update (empty: any in the zone).
    pub owners: &'a [&'a str],
}

/// A running `knotd`.
pub struct Knot {
    ns_name: String,
    conf: String,
    child: ChildGuard,
    _dir: TempDir,
}

impl Knot {
    /// Serves `zone` (e.g. `pd.test`) on port 53 of each of `addrs` (at least one) in
    /// `ns` with `records` (zone-file lines relative to the zone, like `echo 60 A
    /// 198.51.100.1`); returns once it answers for the zone's SOA on every address.
    pub fn start(ns: &Netns, addrs: &[IpAddr], zone: &str, records: &[&str]) -> Knot {
        Knot::start_with_updates(ns, addrs, zone, records, None)
    }

    /// Like [`Knot::start`], and with `update = Some((key name, base64 secret))` the
    /// zone accepts RFC 2136 updates signed with that HMAC-SHA256 TSIG key (and no
    /// others).
    pub fn start_with_updates(
        ns: &Netns,
        addrs: &[IpAddr],
        zone: &str,
        records: &[&str],
        update: Option<(&str, &str)>,
    ) -> Knot {
        let keys: Vec<UpdateKey<'_>> = update
            .map(|(name, secret)| UpdateKey {
                name,
                secret,
                owners: &[],
            })
            .into_iter()
            .collect();
        Knot::start_with_keys(ns, addrs, zone, records, &keys)
    }

    /// Like [`Knot::start`], and the zone accepts RFC 2136 updates signed with any of
    /// `keys`, each for the names it may update (an ACL rule per key).
    pub fn start_with_keys(
        ns: &Netns,
        addrs: &[IpAddr],
        zone: &str,
        records: &[&str],
        keys: &[UpdateKey<'_>],
    ) -> Knot {
        let dir = TempDir::new("knot");
        let d = dir.path().to_string_lossy().into_owned();
        std::fs::create_dir_all(dir.path().join("db")).expect("knot db dir");
        let mut zonefile = format!(
            "$ORIGIN {zone}.\n$TTL 60\n@ SOA ns hostmaster 1 60 60 3600 60\n@ NS ns\nns A 192.0.2.53\n"
        );
        for r in records {
            zonefile.push_str(r);
            zonefile.push('\n');
        }
        std::fs::write(dir.path().join(format!("{zone}.zone")), zonefile).expect("zone file");
        let listen: Vec<String> = addrs.iter().map(|a| format!("{a}@53")).collect();
        let (keys, acl) = if keys.is_empty() {
            (String::new(), String::new())
        } else {
            let mut k = "key:\n".to_owned();
            let mut a = "acl:\n".to_owned();
            let mut ids = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                k.push_str(&format!(
                    "  - id: {}\n    algorithm: hmac-sha256\n    secret: {}\n",
                    key.name, key.secret
                ));
                a.push_str(&format!(
                    "  - id: upd{i}\n    key: {}\n    action: update\n",
                    key.name
                ));
                if !key.owners.is_empty() {
                    let owners: Vec<String> = key.owners.iter().map(|o| format!("{o}.")).collect();
                    a.push_str(&format!(
                        "    update-type: TXT\n    update-owner: name\n    update-owner-match: equal\n    update-owner-name: [ {} ]\n",
                        owners.join(", ")
                    ));
                }
                ids.push(format!("upd{i}"));
            }
            (
                format!("{k}{a}"),
                format!(
                    "    acl: [ {} ]\n    zonefile-sync: -1\n    journal-content: all\n",
                    ids.join(", ")
                ),
            )
        };
        let conf = format!(
            "server:\n    listen: [ {} ]\n    rundir: {d}\ndatabase:\n    storage: {d}/db\n{keys}zone:\n  - domain: {zone}\n    storage: {d}\n    file: {zone}.zone\n{acl}",
            listen.join(", ")
        );
        let conf_path = dir.path().join("knot.conf");
        std::fs::write(&conf_path, conf).expect("knot.conf");
        let conf = conf_path.to_string_lossy().into_owned();
        let mut cmd = ns.command(&["knotd", "-c", &conf]);
        let log = std::fs::File::create(dir.path().join("knotd.log")).expect("knotd.log");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let child = ChildGuard::spawn("knotd", &mut cmd);
        let knot = Knot {
            ns_name: ns.name().to_owned(),
            conf,
            child,
            _dir: dir,
        };
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            addrs.iter().all(|addr| {
                let at = format!("@{addr}");
                let out =
                    ns.try_exec(&["kdig", &at, "+short", "+timeout=1", "+retry=0", "SOA", zone]);
                out.status.success() && !out.stdout.is_empty()
            })
        });
        assert!(
            up,
            "knotd did not answer for {zone} on {addrs:?}:\n{}",
            std::fs::read_to_string(knot._dir.path().join("knotd.log")).unwrap_or_default()
        );
        knot
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns_name,
                "knotc",
                "-c",
                &self.conf,
                "stop",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if self.child.wait_timeout(Duration::from_secs(3)).is_none() {
            self.child.kill();
        }
    }
}
