//! The thin shell that applies a [`Plan`] in the calling thread's network namespace:
//! the nftables script in one `nft -f -` transaction (the table is replaced whole or
//! not at all), read back and compared whole ([`verify_nft`]); sysctls as `/proc/sys` files;
//! addresses, rules and routes over netlink (`portdistrict-netlink`).
//!
//! [`apply_plan`] applies a whole plan in its order (nftables, sysctls, addresses,
//! rules and routes) and returns the [`Undo`] that takes exactly that back: the table
//! deleted, each sysctl set to the value it had before, each operation deleted in
//! reverse order. A step that fails rolls back the steps before it, so a refused plan
//! changes nothing. The caller persists the `Undo` (atomically) before reporting
//! success, so a crash after applying still leaves the way back on disk.
//!
//! [`reapply`] puts a plan back after a reboot or a lost interface (idempotent), and
//! [`undo_routing`] takes back all but the table, for a caller that replaces the table
//! with a ruleset that keeps blocking.
//!
//! To act inside another network namespace, call these from
//! `portdistrict_netlink::netns::run_in` (sockets, `/proc/sys/net` and `nft` all
//! follow the thread's namespace).

mod kernel;
mod nft;

pub use nft::{apply_nft, apply_table, remove_nft, verify_nft, verify_table};

use crate::policy::{IpOp, Object, Plan, Verb};

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
        /// What it printed on stderr (for the reader; never matched).
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
    /// The kernel refused an address, rule or route (or netlink itself failed).
    #[error("{op}")]
    Netlink {
        /// The operation, in `ip` syntax.
        op: String,
        /// The kernel's answer.
        #[source]
        source: portdistrict_netlink::Error,
    },
    /// A sysctl could not be read or written.
    #[error("sysctl {path}")]
    Sysctl {
        /// Its `/proc/sys` path.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// What takes an applied plan back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Undo {
    /// The nftables table to delete (family `inet`).
    pub nft_table: String,
    /// Sysctls and the values they had before, to write back.
    pub sysctls: Vec<(String, String)>,
    /// Operations that delete what was added, in the order to run them.
    pub ip: Vec<IpOp>,
}

/// Applies `plan`: nftables first (the machine is blocked before any route points
/// into the tunnel), then sysctls, then addresses, rules and routes. On failure, what
/// was done is taken back and the first error returned.
pub fn apply_plan(plan: &Plan) -> Result<Undo, ApplyError> {
    let undo = plan_undo(plan)?;
    apply_planned(plan, &undo)?;
    Ok(undo)
}

/// The [`Undo`] of `plan` computed before anything is applied (the sysctls' current
/// values are read now): a write-ahead record. Persisted before [`apply_planned`], it
/// takes back whatever part of the plan a crash left applied, because [`undo_plan`]
/// treats an address, rule or route that is already gone as deleted.
pub fn plan_undo(plan: &Plan) -> Result<Undo, ApplyError> {
    let mut sysctls = Vec::new();
    for s in &plan.sysctls {
        if let Some(family) = kernel::forwarding_switch(&s.name) {
            // Writing it rewrites every interface's flag: record them all, before it,
            // so that undo restores the switch first and then each interface.
            sysctls.extend(kernel::per_interface(family)?);
        }
        sysctls.push((s.name.clone(), kernel::read_sysctl(&s.name)?));
    }
    Ok(Undo {
        nft_table: plan.nft_table.to_owned(),
        sysctls,
        ip: plan
            .ip
            .iter()
            .rev()
            .map(|op| op.with_verb(Verb::Del))
            .collect(),
    })
}

/// Applies `plan` whose write-ahead [`Undo`] is `undo` (from [`plan_undo`]); on
/// failure runs `undo` and returns the first error.
pub fn apply_planned(plan: &Plan, undo: &Undo) -> Result<(), ApplyError> {
    let result = apply_steps(plan);
    if let Err(e) = result {
        // Best effort: the original error is the one to report.
        let _ = undo_plan(undo);
        return Err(e);
    }
    Ok(())
}

fn apply_steps(plan: &Plan) -> Result<(), ApplyError> {
    apply_nft(plan)?;
    apply_sysctls(plan)?;
    let mut h = kernel::handle()?;
    for op in &plan.ip {
        kernel::run_op(&mut h, op)?;
    }
    Ok(())
}

/// Writes the plan's sysctls, in order.
fn apply_sysctls(plan: &Plan) -> Result<(), ApplyError> {
    for s in &plan.sysctls {
        kernel::write_sysctl(&s.name, &s.value)?;
    }
    Ok(())
}

/// Takes an applied plan back: addresses, rules and routes, sysctls (last set, first
/// restored), then the table. Every step is tried; the first error is returned. An
/// operation whose object is already gone (its interface deleted, or never added
/// before a crash) counts as done.
pub fn undo_plan(undo: &Undo) -> Result<(), ApplyError> {
    let routing = undo_routing(undo);
    let table = remove_nft(&undo.nft_table);
    routing.and(table)
}

/// Takes back the addresses, rules, routes and sysctls of an applied plan but leaves
/// its nftables table (which the caller replaces, e.g. by a ruleset that keeps
/// blocking). Every step is tried; the first error is returned.
pub fn undo_routing(undo: &Undo) -> Result<(), ApplyError> {
    let mut first = None;
    match kernel::handle() {
        Ok(mut h) => {
            for op in &undo.ip {
                match kernel::run_op(&mut h, op) {
                    Err(e) if !kernel::already_gone(&e) => {
                        first.get_or_insert(e);
                    }
                    _ => {}
                }
            }
        }
        Err(e) => {
            first.get_or_insert(e);
        }
    }
    for (name, old) in undo.sysctls.iter().rev() {
        match kernel::write_sysctl(name, old) {
            // A per-interface setting of an interface that is gone went with it.
            Err(e) if !kernel::sysctl_gone(&e) => {
                first.get_or_insert(e);
            }
            _ => {}
        }
    }
    first.map_or(Ok(()), Err)
}

/// Puts an applied plan back in place after its rules and routes were lost (a reboot,
/// a flushed rule list, the tunnel interface re-created): the nftables table first
/// (blocked before anything else), then the sysctls, then each rule exactly once (a
/// copy already there is deleted first, so that repeating this never stacks
/// duplicates), then the addresses and routes with `replace` — only when `routes` is
/// true, because the tunnel interface they name may not exist yet (the table blocks
/// meanwhile).
pub fn reapply(plan: &Plan, routes: bool) -> Result<(), ApplyError> {
    apply_nft(plan)?;
    apply_sysctls(plan)?;
    let mut h = kernel::handle()?;
    for op in &plan.ip {
        match op.object {
            Object::Rule(_) => {
                // Bounded: each round deletes one copy; 16 copies are already a fault.
                for _ in 0..16 {
                    match kernel::run_op(&mut h, &op.with_verb(Verb::Del)) {
                        Ok(()) => {}
                        Err(e) if kernel::already_gone(&e) => break,
                        Err(e) => return Err(e),
                    }
                }
                kernel::run_op(&mut h, op)?;
            }
            Object::Route(_) | Object::Address(_) if routes => {
                kernel::run_op(&mut h, &op.with_verb(Verb::Replace))?;
            }
            _ => {}
        }
    }
    Ok(())
}
