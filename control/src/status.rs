//! `portdistrict status`: every role this machine has, on any machine: the mesh
//! (identity, device, portdistrictd, tunnels), the consumer (system mode, lockdown)
//! and the provider (exit node, its consumers and invites). A role that is not set up
//! says how to set it up; reading never creates state.

use crate::ctl::{self, Request};
use crate::Dirs;
use serde_json::{json, Value};
use std::fmt::Write as _;

/// `status [--json]`.
pub fn status(dirs: &Dirs, json: bool) -> anyhow::Result<String> {
    let mesh = mesh(dirs)?;
    let consumer = consumer(dirs)?;
    let provider = provider(dirs)?;
    if json {
        let v = json!({
            "mesh": mesh.as_ref().map(|(v, _)| v),
            "consumer": consumer.as_ref().map(|(v, _)| v),
            "provider": provider.as_ref().map(|(v, _)| v),
        });
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut s = String::new();
    let mut section = |title: &str, part: Option<(Value, String)>, absent: &str| {
        let _ = writeln!(s, "{title}:");
        let text = part.map_or_else(|| format!("{absent}\n"), |(_, t)| t);
        for line in text.lines() {
            let _ = writeln!(s, "  {line}");
        }
    };
    section(
        "mesh",
        mesh,
        "no identity (`portdistrict identity init --namespace NS` to join a mesh)",
    );
    section(
        "consumer",
        consumer,
        "system mode off (`portdistrict use INVITE --mode system` to go through an exit)",
    );
    section(
        "provider",
        provider,
        "no exit node (`portdistrict exit serve --uplink IFACE` to run one)",
    );
    Ok(s)
}

/// The mesh's part, when this machine has an identity.
fn mesh(dirs: &Dirs) -> anyhow::Result<Option<(Value, String)>> {
    if !dirs.state.join("identity/identity.json").exists() {
        return Ok(None);
    }
    let v = serde_json::from_str(&crate::tunnels::status(dirs, true)?)?;
    Ok(Some((v, crate::tunnels::status(dirs, false)?)))
}

/// The consumer's part, when system mode or lockdown was ever set up here.
fn consumer(dirs: &Dirs) -> anyhow::Result<Option<(Value, String)>> {
    let dir = dirs.state.join("use");
    let legacy = dirs.run.join("use.json");
    if !dir.join("state.json").exists() && !dir.join("lockdown").exists() && !legacy.exists() {
        return Ok(None);
    }
    let v = serde_json::from_str(&crate::consumer::status(dirs, true)?)?;
    Ok(Some((v, crate::consumer::status(dirs, false)?)))
}

/// The provider's part, when this machine has an exit store.
fn provider(dirs: &Dirs) -> anyhow::Result<Option<(Value, String)>> {
    if !dirs.state.join("exit/store.json").exists() {
        return Ok(None);
    }
    let socket = ctl::Daemon::Exit.socket(dirs);
    let running = std::os::unix::net::UnixStream::connect(&socket).is_ok();
    let list: Value = serde_json::from_str(&ctl::handle::via_daemon(
        dirs,
        ctl::Daemon::Exit,
        &Request::ExitList { json: true },
    )?)?;
    let count = |k: &str| list[k].as_array().map_or(0, Vec::len);
    let live = list["invites"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|i| i["state"] == "live").count());
    let v = json!({
        "exit_serve_running": running,
        "consumers": count("consumers"),
        "invites": count("invites"),
        "live_invites": live,
    });
    let text = format!(
        "exit node: {}\nconsumers: {}\ninvites:   {} ({live} live)\n",
        if running {
            format!("running ({})", socket.display())
        } else {
            "not running (`portdistrict exit serve --uplink IFACE`)".to_owned()
        },
        count("consumers"),
        count("invites"),
    );
    Ok(Some((v, text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(name: &str) -> Dirs {
        let base = std::env::temp_dir().join(format!("pd-status-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        Dirs {
            state: base.join("state"),
            run: base.join("run"),
        }
    }

    #[test]
    fn a_fresh_machine_has_no_roles_and_reading_creates_nothing() {
        let d = dirs("fresh");
        let text = status(&d, false).unwrap();
        assert!(text.contains("mesh:\n  no identity"), "{text}");
        assert!(text.contains("consumer:\n  system mode off"), "{text}");
        assert!(text.contains("provider:\n  no exit node"), "{text}");
        let v: Value = serde_json::from_str(&status(&d, true).unwrap()).unwrap();
        assert!(v["mesh"].is_null() && v["consumer"].is_null() && v["provider"].is_null());
        assert!(!d.state.exists(), "status created state");
    }

    #[test]
    fn a_provider_only_machine_shows_its_exit() {
        let d = dirs("provider");
        let o = crate::exit::InviteOptions::parse(&["--endpoint", "192.0.2.1:51820"]).unwrap();
        crate::exit::invite(&d, &o).unwrap();
        let v: Value = serde_json::from_str(&status(&d, true).unwrap()).unwrap();
        assert!(v["mesh"].is_null(), "{v}");
        assert_eq!(v["provider"]["exit_serve_running"], false);
        assert_eq!(v["provider"]["invites"], 1);
        assert_eq!(v["provider"]["live_invites"], 1);
        assert_eq!(v["provider"]["consumers"], 0);
        let text = status(&d, false).unwrap();
        assert!(text.contains("exit node: not running"), "{text}");
        let _ = std::fs::remove_dir_all(d.state.parent().unwrap());
    }
}
