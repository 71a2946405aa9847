//! `portdistrict bugreport [--output FILE]`: one file with what a maintainer needs to
//! understand a problem on this machine: versions, `status`, every userspace WireGuard
//! interface's counters, the nftables ruleset, policy routing, addresses, the sysctls
//! and resolver file system mode changes, and the state files with every secret
//! redacted. The file is written mode 0600, atomically; nothing on the machine changes.

use crate::Dirs;
use anyhow::Context as _;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The largest state file copied into a report.
const MAX_STATE_FILE: u64 = 4 << 20;

/// Object keys whose values are secrets (or bearer tokens, or would identify peers'
/// traffic): their values are replaced, whatever they hold.
const SECRET_KEYS: &[&str] = &[
    "key",
    "secret",
    "token",
    "invite",
    "psk",
    "seed",
    "private",
    "passphrase",
    "proof",
];

/// Writes the report to `out` (default `./portdistrict-bugreport-UNIXTIME.txt`);
/// returns its path.
pub fn bugreport(dirs: &Dirs, out: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = out.unwrap_or_else(|| {
        PathBuf::from(format!("portdistrict-bugreport-{}.txt", crate::exit::now()))
    });
    let text = report(dirs);
    portdistrict_exitnode::state::write_atomic_mode(&path, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The report's text.
fn report(dirs: &Dirs) -> String {
    let mut r = String::new();
    let mut section = |title: &str, body: String| {
        let _ = writeln!(r, "==== {title}\n{}\n", body.trim_end());
    };
    section(
        "versions",
        format!(
            "portdistrict {}\nkernel {}\n{}\n{}\n{}",
            env!("CARGO_PKG_VERSION"),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim(),
            command(&[
                &crate::serve::dataplane_binary().to_string_lossy(),
                "--version"
            ]),
            command(&["nft", "--version"]),
            command(&["ip", "-V"]),
        ),
    );
    section(
        "portdistrict status --json",
        crate::status::status(dirs, true).unwrap_or_else(|e| format!("error: {e:#}")),
    );
    section("dataplanes (--stats of every interface)", dataplanes());
    section(
        "nft -j list ruleset",
        command(&["nft", "-j", "list", "ruleset"]),
    );
    for (title, argv) in [
        ("ip -j -4 rule", &["ip", "-j", "-4", "rule"][..]),
        ("ip -j -6 rule", &["ip", "-j", "-6", "rule"]),
        (
            "ip -j -4 route show table all",
            &["ip", "-j", "-4", "route", "show", "table", "all"],
        ),
        (
            "ip -j -6 route show table all",
            &["ip", "-j", "-6", "route", "show", "table", "all"],
        ),
        ("ip -j addr", &["ip", "-j", "addr"]),
    ] {
        section(title, command(argv));
    }
    section("sysctls", sysctls());
    section(
        "/etc/resolv.conf",
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_else(|e| format!("error: {e}")),
    );
    section(
        &format!(
            "state files under {} (secrets redacted)",
            dirs.state.display()
        ),
        state_files(&dirs.state),
    );
    r
}

/// Runs `argv` and returns its output, or why it could not.
fn command(argv: &[&str]) -> String {
    match std::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("{}: {e}", argv.join(" ")),
    }
}

/// The counters of every interface with a socket in the UAPI directory.
fn dataplanes() -> String {
    let dir = Path::new(crate::dataplane::SOCKET_DIR);
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return format!("no {} (no userspace WireGuard interface)", dir.display());
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".sock").map(str::to_owned)
        })
        .collect();
    names.sort();
    for name in names.iter().take(64) {
        let _ = writeln!(out, "-- {name}");
        match crate::dataplane::UapiClient::new(name).counters() {
            Ok(c) => {
                for (k, v) in c {
                    let _ = writeln!(out, "{k}: {v}");
                }
            }
            Err(e) => {
                let _ = writeln!(out, "no counters: {e}");
            }
        }
    }
    if names.is_empty() {
        out.push_str("none\n");
    }
    out
}

/// The sysctls portdistrict reads or changes.
fn sysctls() -> String {
    let mut out = String::new();
    for name in [
        "net/ipv4/ip_forward",
        "net/ipv6/conf/all/forwarding",
        "net/ipv4/conf/all/src_valid_mark",
        "net/ipv6/conf/all/disable_ipv6",
        "kernel/io_uring_disabled",
    ] {
        let v = std::fs::read_to_string(Path::new("/proc/sys").join(name))
            .map_or_else(|e| format!("({e})"), |v| v.trim().to_owned());
        let _ = writeln!(out, "{}: {v}", name.replace('/', "."));
    }
    out
}

/// Every file under `state` with its mode and size; JSON files' contents redacted.
fn state_files(state: &Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = String::new();
    let mut stack = vec![state.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            let _ = writeln!(out, "{}: not readable or missing", dir.display());
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(std::fs::DirEntry::path);
        for e in entries {
            seen += 1;
            if seen > 10_000 {
                out.push_str("(more files left out)\n");
                return out;
            }
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let _ = writeln!(
                out,
                "{} {:o} {} bytes",
                path.display(),
                meta.permissions().mode() & 0o7777,
                meta.len()
            );
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && path.extension().is_some_and(|x| x == "json")
                && meta.len() <= MAX_STATE_FILE
            {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let shown = match serde_json::from_str::<Value>(&text) {
                    Ok(v) => serde_json::to_string_pretty(&redact(v)).unwrap_or_default(),
                    Err(_) => "(not JSON: left out)".to_owned(),
                };
                let _ = writeln!(out, "{shown}");
            }
        }
    }
    out
}

/// `v` with the value of every key in [`SECRET_KEYS`] (by substring, any case)
/// replaced by `"<redacted>"`.
fn redact(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    if SECRET_KEYS.iter().any(|s| lower.contains(s)) {
                        (k, Value::from("<redacted>"))
                    } else {
                        (k, redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(redact).collect()),
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let v = serde_json::json!({
            "invite": "portdistrict-invite1:SECRET",
            "consumers": [{"wg_key": "SECRET", "inner_v4": "100.64.0.2"}],
            "nested": {"token_hash": "SECRET", "PrivateKey": "SECRET", "port": 51820},
        });
        let text = redact(v).to_string();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(
            text.contains("100.64.0.2") && text.contains("51820"),
            "{text}"
        );
    }

    #[test]
    fn a_report_of_an_exit_store_keeps_no_token() {
        let base = std::env::temp_dir().join(format!("pd-bugreport-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dirs = Dirs {
            state: base.join("state"),
            run: base.join("run"),
        };
        let o = crate::exit::InviteOptions::parse(&["--endpoint", "192.0.2.1:51820"]).unwrap();
        let invite = crate::exit::invite(&dirs, &o).unwrap();
        let store = std::fs::read_to_string(dirs.state.join("exit/store.json")).unwrap();
        let token: Value = serde_json::from_str(&store).unwrap();
        let token = token["invites"][0]["token"].as_str().unwrap().to_owned();
        let out = base.join("report.txt");
        let path = bugreport(&dirs, Some(out.clone())).unwrap();
        assert_eq!(path, out);
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(!text.contains(&token), "the invite's token leaked");
        assert!(!text.contains(invite.trim()), "the invite leaked");
        for s in [
            "==== versions",
            "==== nft -j list ruleset",
            "store.json 600",
            "<redacted>",
        ] {
            assert!(text.contains(s), "{s} missing");
        }
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
