//! The thin shell that applies the firewall part of a [`Plan`]: the nftables script in
//! one `nft -f -` transaction (the table is replaced whole or not at all), then read
//! back with `nft -j list table` and verified chain by chain against the script.
//!
//! [`apply_plan`] applies a whole plan in its order (nftables, sysctls, rules and
//! routes) and returns the [`Undo`] that takes exactly that back: the table deleted,
//! each sysctl set to the value it had before, each rule and route deleted in reverse
//! order. A step that fails rolls back the steps before it, so a refused plan changes
//! nothing. The caller persists the `Undo` (atomically) before reporting success, so a
//! crash after applying still leaves the way back on disk.
//!
//! [`reapply`] puts a plan back after a reboot or a lost interface (idempotent), and
//! [`undo_routing`] takes back all but the table, for a caller that replaces the table
//! with a ruleset that keeps blocking.
//!
//! Every command may run behind a prefix (`ip netns exec NS`, for tests and for
//! instances that live in a namespace).

use crate::policy::{IpCommand, Plan};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// Why applying or removing failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A command could not be started (not installed, no permission).
    #[error("running {cmd}: {source} (is nftables installed, and are we root?)")]
    Spawn {
        /// The command line.
        cmd: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed; nothing of the transaction was applied.
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The table read back is not what was applied.
    #[error("nftables table {table} read back does not match: {problem}")]
    Verify {
        /// The table.
        table: String,
        /// What differs.
        problem: String,
    },
}

/// Runs `prefix... argv...` with `stdin` fed in; returns stdout.
fn run(prefix: &[&str], argv: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
    let all: Vec<&str> = prefix.iter().chain(argv).copied().collect();
    let cmd = all.join(" ");
    let mut c = Command::new(all[0]);
    c.args(&all[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|source| ApplyError::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| ApplyError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| ApplyError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ApplyError::Failed {
            cmd,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces the plan's nftables table in one transaction and verifies it.
pub fn apply_nft(plan: &Plan, prefix: &[&str]) -> Result<(), ApplyError> {
    run(prefix, &["nft", "-f", "-"], Some(&plan.nft))?;
    verify_nft(plan, prefix)
}

/// Reads the plan's table back and checks that every chain holds as many rules as the
/// script gave it.
pub fn verify_nft(plan: &Plan, prefix: &[&str]) -> Result<(), ApplyError> {
    let json = run(
        prefix,
        &["nft", "-j", "list", "table", "inet", plan.nft_table],
        None,
    )?;
    let bad = |problem: String| ApplyError::Verify {
        table: plan.nft_table.to_owned(),
        problem,
    };
    let got = rules_per_chain(&json).map_err(|e| bad(format!("unreadable listing: {e}")))?;
    let want = script_rules_per_chain(&plan.nft);
    if got != want {
        return Err(bad(format!("rules per chain {got:?}, expected {want:?}")));
    }
    Ok(())
}

/// Deletes `table` (family `inet`); a table that is not there is no error.
pub fn remove_nft(table: &str, prefix: &[&str]) -> Result<(), ApplyError> {
    // `destroy` (nft >= 1.0.8) would do; `add` then `delete` works everywhere.
    let script = format!("table inet {table}\ndelete table inet {table}\n");
    run(prefix, &["nft", "-f", "-"], Some(&script)).map(|_| ())
}

/// What takes an applied plan back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Undo {
    /// The nftables table to delete (family `inet`).
    pub nft_table: String,
    /// Sysctls and the values they had before, to write back.
    pub sysctls: Vec<(String, String)>,
    /// `ip` commands that delete what was added, in the order to run them.
    pub ip: Vec<IpCommand>,
}

/// Applies `plan`: nftables first (the machine is blocked before any route points
/// into the tunnel), then sysctls, then rules and routes. On failure, what was done is
/// taken back and the first error returned.
pub fn apply_plan(plan: &Plan, prefix: &[&str]) -> Result<Undo, ApplyError> {
    let undo = plan_undo(plan, prefix)?;
    apply_planned(plan, &undo, prefix)?;
    Ok(undo)
}

/// The [`Undo`] of `plan` computed before anything is applied (the sysctls' current
/// values are read now): a write-ahead record. Persisted before [`apply_planned`], it
/// takes back whatever part of the plan a crash left applied, because [`undo_plan`]
/// treats a rule or route that is already gone as deleted.
pub fn plan_undo(plan: &Plan, prefix: &[&str]) -> Result<Undo, ApplyError> {
    let mut sysctls = Vec::new();
    for s in &plan.sysctls {
        if let Some(family) = forwarding_switch(&s.name) {
            // Writing it rewrites every interface's flag: record them all, before it,
            // so that undo restores the switch first and then each interface.
            let listing = run(prefix, &["sysctl", &format!("net.{family}.conf")], None)?;
            sysctls.extend(per_interface(&listing, family));
        }
        let old = run(prefix, &["sysctl", "-n", &s.name], None)?
            .trim()
            .to_owned();
        sysctls.push((s.name.clone(), old));
    }
    Ok(Undo {
        nft_table: plan.nft_table.to_owned(),
        sysctls,
        ip: plan.ip.iter().rev().map(inverse).collect(),
    })
}

/// Applies `plan` whose write-ahead [`Undo`] is `undo` (from [`plan_undo`]); on
/// failure runs `undo` and returns the first error.
pub fn apply_planned(plan: &Plan, undo: &Undo, prefix: &[&str]) -> Result<(), ApplyError> {
    let result = apply_steps(plan, prefix);
    if let Err(e) = result {
        // Best effort: the original error is the one to report.
        let _ = undo_plan(undo, prefix);
        return Err(e);
    }
    Ok(())
}

fn apply_steps(plan: &Plan, prefix: &[&str]) -> Result<(), ApplyError> {
    apply_nft(plan, prefix)?;
    apply_sysctls(plan, prefix)?;
    for c in &plan.ip {
        run(prefix, &ip_argv(c), None)?;
    }
    Ok(())
}

/// Writes the plan's sysctls, in order.
fn apply_sysctls(plan: &Plan, prefix: &[&str]) -> Result<(), ApplyError> {
    for s in &plan.sysctls {
        run(
            prefix,
            &["sysctl", "-q", "-w", &format!("{}={}", s.name, s.value)],
            None,
        )?;
    }
    Ok(())
}

/// Takes an applied plan back: rules and routes, sysctls (last set, first restored),
/// then the table. Every step is tried; the first error is returned. A rule or route
/// that is already gone (its interface deleted, or never added before a crash) counts
/// as deleted.
pub fn undo_plan(undo: &Undo, prefix: &[&str]) -> Result<(), ApplyError> {
    let routing = undo_routing(undo, prefix);
    let table = remove_nft(&undo.nft_table, prefix);
    routing.and(table)
}

/// Takes back the rules, routes and sysctls of an applied plan but leaves its nftables
/// table (which the caller replaces, e.g. by a ruleset that keeps blocking). Every
/// step is tried; the first error is returned.
pub fn undo_routing(undo: &Undo, prefix: &[&str]) -> Result<(), ApplyError> {
    let mut first = None;
    for c in &undo.ip {
        match run(prefix, &ip_argv(c), None) {
            Ok(_) => {}
            Err(ApplyError::Failed { ref stderr, .. }) if already_gone(stderr) => {}
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    for (name, old) in undo.sysctls.iter().rev() {
        match run(
            prefix,
            &["sysctl", "-q", "-w", &format!("{name}={old}")],
            None,
        ) {
            Ok(_) => {}
            // A per-interface setting of an interface that is gone went with it.
            Err(ApplyError::Failed { ref stderr, .. }) if stderr.contains("cannot stat") => {}
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// Puts an applied plan back in place after its rules and routes were lost (a reboot,
/// a flushed rule list, the tunnel interface re-created): the nftables table first
/// (blocked before anything else), then the sysctls, then each `ip rule` exactly once
/// (a copy already there is deleted first, so that repeating this never stacks
/// duplicates), then the routes with `replace` — only when `routes` is true, because
/// a route into a tunnel interface that does not exist yet cannot be added (the table
/// blocks meanwhile).
pub fn reapply(plan: &Plan, routes: bool, prefix: &[&str]) -> Result<(), ApplyError> {
    apply_nft(plan, prefix)?;
    apply_sysctls(plan, prefix)?;
    for c in &plan.ip {
        match c.args.first().map(String::as_str) {
            Some("rule") => {
                // Bounded: each round deletes one copy; 16 copies are already a fault.
                for _ in 0..16 {
                    match run(prefix, &ip_argv(&inverse(c)), None) {
                        Ok(_) => {}
                        Err(ApplyError::Failed { ref stderr, .. }) if already_gone(stderr) => break,
                        Err(e) => return Err(e),
                    }
                }
                run(prefix, &ip_argv(c), None)?;
            }
            Some("route") if routes => run(prefix, &ip_argv(&replacing(c)), None).map(|_| ())?,
            _ => {}
        }
    }
    Ok(())
}

/// `... add ...` -> `... replace ...`.
fn replacing(c: &IpCommand) -> IpCommand {
    let mut c = c.clone();
    if let Some(verb) = c.args.get_mut(1) {
        if verb == "add" {
            *verb = "replace".to_owned();
        }
    }
    c
}

/// `ipv4` or `ipv6` when `name` is that family's global forwarding switch
/// (`net.ipvN.conf.all.forwarding`): the kernel copies a write of it into every
/// interface's `forwarding` (and with IPv6 forwarding on, `accept_ra = 1` stops
/// accepting router advertisements).
fn forwarding_switch(name: &str) -> Option<&'static str> {
    match name {
        "net.ipv4.conf.all.forwarding" | "net.ipv4.ip_forward" => Some("ipv4"),
        "net.ipv6.conf.all.forwarding" => Some("ipv6"),
        _ => None,
    }
}

/// The per-interface (and `default`) `forwarding` values, and for IPv6 `accept_ra`,
/// in a `sysctl net.ipvN.conf` listing (`name = value` lines).
fn per_interface(listing: &str, family: &str) -> Vec<(String, String)> {
    let head = format!("net.{family}.conf.");
    let keys: &[&str] = if family == "ipv6" {
        &["forwarding", "accept_ra"]
    } else {
        &["forwarding"]
    };
    let mut out = Vec::new();
    for line in listing.lines() {
        let Some((name, value)) = line.split_once(" = ") else {
            continue;
        };
        let Some((iface, key)) = name
            .strip_prefix(&head)
            .and_then(|rest| rest.rsplit_once('.'))
        else {
            continue;
        };
        if iface != "all" && keys.contains(&key) {
            out.push((name.to_owned(), value.trim().to_owned()));
        }
    }
    out
}

/// Runs one `ip` command of a plan.
pub fn run_ip(c: &IpCommand, prefix: &[&str]) -> Result<(), ApplyError> {
    run(prefix, &ip_argv(c), None).map(|_| ())
}

/// What `ip rule del` / `ip route del` say when there is nothing to delete.
fn already_gone(stderr: &str) -> bool {
    [
        "No such process",
        "No such file or directory",
        "Cannot find device",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

fn ip_argv(c: &IpCommand) -> Vec<&str> {
    let mut v = vec!["ip", c.family.flag()];
    v.extend(c.args.iter().map(String::as_str));
    v
}

/// The command that deletes what `c` adds (`... add ...` -> `... del ...`).
fn inverse(c: &IpCommand) -> IpCommand {
    let mut args = c.args.clone();
    if let Some(verb) = args.get_mut(1) {
        if verb == "add" {
            *verb = "del".to_owned();
        }
    }
    IpCommand {
        family: c.family,
        args,
    }
}

/// Counts the rules of each chain in an `nft -j list table` listing.
fn rules_per_chain(json: &str) -> Result<BTreeMap<String, usize>, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let mut out = BTreeMap::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(name) = item["chain"]["name"].as_str() {
            out.entry(name.to_owned()).or_insert(0);
        }
        if let Some(chain) = item["rule"]["chain"].as_str() {
            *out.entry(chain.to_owned()).or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// Counts the rules of each chain in one of our scripts (every line inside a chain
/// block except its `type ... hook ...` line).
fn script_rules_per_chain(script: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut chain: Option<String> = None;
    for line in script.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("chain ") {
            let name = rest.trim_end_matches('{').trim().to_owned();
            out.insert(name.clone(), 0);
            chain = Some(name);
        } else if line == "}" {
            chain = None;
        } else if let Some(c) = &chain {
            if !line.is_empty() && !line.starts_with("type ") {
                *out.entry(c.clone()).or_insert(0) += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rules_in_scripts_and_listings() {
        let script = "table inet t\ndelete table inet t\ntable inet t {\n\tset s {\n\t\ttype ipv4_addr;\n\t}\n\tchain output {\n\t\ttype filter hook output priority filter; policy drop;\n\t\toif \"lo\" accept\n\t\tcounter drop\n\t}\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n";
        let want: BTreeMap<String, usize> =
            [("output".to_owned(), 2), ("forward".to_owned(), 0)].into();
        assert_eq!(script_rules_per_chain(script), want);
        let json = r#"{"nftables": [{"metainfo": {}}, {"table": {"name": "t"}},
            {"chain": {"name": "output"}}, {"chain": {"name": "forward"}},
            {"rule": {"chain": "output", "expr": []}}, {"rule": {"chain": "output", "expr": []}}]}"#;
        assert_eq!(rules_per_chain(json).unwrap(), want);
        assert!(rules_per_chain("not json").is_err());
    }

    #[test]
    fn a_forwarding_switch_records_every_interface_first() {
        assert_eq!(
            forwarding_switch("net.ipv6.conf.all.forwarding"),
            Some("ipv6")
        );
        assert_eq!(forwarding_switch("net.ipv6.conf.eth0.forwarding"), None);
        assert_eq!(forwarding_switch("net.ipv4.conf.eth0.forwarding"), None);
        let listing = "net.ipv6.conf.all.accept_ra = 1\nnet.ipv6.conf.all.forwarding = 0\n\
            net.ipv6.conf.default.accept_ra = 1\nnet.ipv6.conf.default.forwarding = 0\n\
            net.ipv6.conf.eth0.accept_ra = 2\nnet.ipv6.conf.eth0.forwarding = 1\n\
            net.ipv6.conf.eth0.mtu = 1500\nnet.ipv6.conf.eth0/100.forwarding = 0\n";
        let got = per_interface(listing, "ipv6");
        let want: Vec<(String, String)> = [
            ("net.ipv6.conf.default.accept_ra", "1"),
            ("net.ipv6.conf.default.forwarding", "0"),
            ("net.ipv6.conf.eth0.accept_ra", "2"),
            ("net.ipv6.conf.eth0.forwarding", "1"),
            ("net.ipv6.conf.eth0/100.forwarding", "0"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        assert_eq!(got, want);
        assert!(per_interface(listing, "ipv4").is_empty());
    }

    #[test]
    fn inverse_turns_adds_into_deletes() {
        let c = IpCommand {
            family: crate::policy::Family::V6,
            args: [
                "rule", "add", "priority", "32761", "not", "fwmark", "0xca6c", "table", "51820",
            ]
            .map(String::from)
            .to_vec(),
        };
        let inv = inverse(&c);
        assert_eq!(inv.args[1], "del");
        assert_eq!(inv.args[2..], c.args[2..]);
        assert_eq!(ip_argv(&inv)[..4], ["ip", "-6", "rule", "del"]);
        let route = IpCommand {
            family: crate::policy::Family::V4,
            args: ["route", "add", "default", "dev", "pd0", "table", "51820"]
                .map(String::from)
                .to_vec(),
        };
        assert_eq!(replacing(&route).args[1], "replace");
        assert_eq!(replacing(&route).args[2..], route.args[2..]);
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let e = run(&[], &["/nonexistent/nft"], None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/nft"), "{e}");
        assert!(matches!(e, ApplyError::Spawn { .. }));
        let e = run(&[], &["false"], None).unwrap_err();
        assert!(matches!(e, ApplyError::Failed { .. }), "{e}");
    }
}
