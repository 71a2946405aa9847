//! The kernel part of applying a plan: its `ip` operations over netlink and its
//! sysctls as `/proc/sys` files, in the calling thread's network namespace.

use super::ApplyError;
use crate::policy::{sysctl_path, IpOp, Object, Verb};
use portdistrict_netlink as nl;
use std::io;

/// A netlink handle of the calling thread's namespace.
pub(super) fn handle() -> Result<nl::Handle, ApplyError> {
    nl::Handle::open().map_err(|source| ApplyError::Netlink {
        op: "opening NETLINK_ROUTE".to_owned(),
        source,
    })
}

fn verb(v: Verb) -> nl::Verb {
    match v {
        Verb::Add => nl::Verb::Add,
        Verb::Replace => nl::Verb::Replace,
        Verb::Del => nl::Verb::Del,
    }
}

fn family(f: crate::policy::Family) -> nl::Family {
    match f {
        crate::policy::Family::V4 => nl::Family::V4,
        crate::policy::Family::V6 => nl::Family::V6,
    }
}

/// Carries out one operation.
pub(super) fn run_op(h: &mut nl::Handle, op: &IpOp) -> Result<(), ApplyError> {
    let result = match &op.object {
        Object::Route(r) => h.link_index(&r.dev).and_then(|oif| {
            h.route(
                verb(op.verb),
                &nl::Route {
                    family: family(r.family),
                    dst: r.dst.map(|d| (d.addr(), d.prefix_len())),
                    oif: Some(oif),
                    table: r.table.id(),
                    kind: nl::RouteKind::Unicast,
                },
            )
        }),
        Object::Rule(r) => h.rule(
            verb(op.verb),
            &nl::Rule {
                family: family(r.family),
                priority: Some(r.priority),
                fwmark: r.fwmark,
                invert: r.not,
                table: r.table.id(),
                suppress_prefixlength: r.suppress_prefixlength,
            },
        ),
        Object::Address(a) => h.link_index(&a.dev).and_then(|ifindex| {
            h.address(
                verb(op.verb),
                &nl::AddressSpec {
                    ifindex,
                    addr: a.addr,
                    prefix_len: a.prefix_len,
                    nodad: a.nodad,
                    deprecated: false,
                },
            )
        }),
    };
    result.map_err(|source| ApplyError::Netlink {
        op: op.to_string(),
        source,
    })
}

/// Whether `e` says the object of a delete is already gone (or its interface is).
pub(super) fn already_gone(e: &ApplyError) -> bool {
    matches!(e, ApplyError::Netlink { source, .. } if source.is_not_found())
}

/// The current value of a sysctl.
pub(super) fn read_sysctl(name: &str) -> Result<String, ApplyError> {
    let path = sysctl_path(name);
    std::fs::read_to_string(&path)
        .map(|v| v.trim().to_owned())
        .map_err(|source| ApplyError::Sysctl { path, source })
}

/// Writes a sysctl.
pub(super) fn write_sysctl(name: &str, value: &str) -> Result<(), ApplyError> {
    let path = sysctl_path(name);
    std::fs::write(&path, value).map_err(|source| ApplyError::Sysctl { path, source })
}

/// Whether `e` is a write to the sysctl of an interface that is gone.
pub(super) fn sysctl_gone(e: &ApplyError) -> bool {
    matches!(e, ApplyError::Sysctl { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

/// `ipv4` or `ipv6` when `name` is that family's global forwarding switch
/// (`net.ipvN.conf.all.forwarding`): the kernel copies a write of it into every
/// interface's `forwarding` (and with IPv6 forwarding on, `accept_ra = 1` stops
/// accepting router advertisements).
pub(super) fn forwarding_switch(name: &str) -> Option<&'static str> {
    match name {
        "net.ipv4.conf.all.forwarding" | "net.ipv4.ip_forward" => Some("ipv4"),
        "net.ipv6.conf.all.forwarding" => Some("ipv6"),
        _ => None,
    }
}

/// The per-interface (and `default`) sysctls a write of `family`'s forwarding switch
/// rewrites: `forwarding`, and for IPv6 `accept_ra`, of each of `ifaces` (the
/// directory names under `/proc/sys/net/ipvN/conf`), sorted, in `sysctl`'s dotted
/// form (a dot in an interface name is a `/`).
pub(super) fn per_interface_names(ifaces: &[String], family: &str) -> Vec<String> {
    let keys: &[&str] = if family == "ipv6" {
        &["accept_ra", "forwarding"]
    } else {
        &["forwarding"]
    };
    let mut ifaces: Vec<&String> = ifaces.iter().filter(|i| i.as_str() != "all").collect();
    ifaces.sort();
    ifaces
        .iter()
        .flat_map(|i| {
            let i = i.replace('.', "/");
            keys.iter()
                .map(move |k| format!("net.{family}.conf.{i}.{k}"))
        })
        .collect()
}

/// The current values of [`per_interface_names`] for this namespace's interfaces.
pub(super) fn per_interface(family: &str) -> Result<Vec<(String, String)>, ApplyError> {
    let dir = format!("/proc/sys/net/{family}/conf");
    let entries = std::fs::read_dir(&dir).map_err(|source| ApplyError::Sysctl {
        path: dir.clone(),
        source,
    })?;
    let ifaces: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut out = Vec::new();
    for name in per_interface_names(&ifaces, family) {
        match read_sysctl(&name) {
            Ok(v) => out.push((name, v)),
            // An interface that went away meanwhile has nothing to restore.
            Err(e) if sysctl_gone(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarding_switch_records_every_interface_first() {
        assert_eq!(
            forwarding_switch("net.ipv6.conf.all.forwarding"),
            Some("ipv6")
        );
        assert_eq!(forwarding_switch("net.ipv6.conf.eth0.forwarding"), None);
        assert_eq!(forwarding_switch("net.ipv4.conf.eth0.forwarding"), None);
        let ifaces: Vec<String> = ["eth0", "all", "eth0.100", "default"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            per_interface_names(&ifaces, "ipv6"),
            [
                "net.ipv6.conf.default.accept_ra",
                "net.ipv6.conf.default.forwarding",
                "net.ipv6.conf.eth0.accept_ra",
                "net.ipv6.conf.eth0.forwarding",
                "net.ipv6.conf.eth0/100.accept_ra",
                "net.ipv6.conf.eth0/100.forwarding",
            ]
        );
        assert_eq!(
            per_interface_names(&ifaces, "ipv4"),
            [
                "net.ipv4.conf.default.forwarding",
                "net.ipv4.conf.eth0.forwarding",
                "net.ipv4.conf.eth0/100.forwarding",
            ]
        );
    }

    #[test]
    fn sysctls_read_this_namespace() {
        // Readable without root; a name that does not exist is NotFound.
        assert!(read_sysctl("net.ipv4.conf.lo.forwarding").is_ok());
        let e = read_sysctl("net.ipv4.conf.pd-none.forwarding").unwrap_err();
        assert!(sysctl_gone(&e), "{e}");
    }
}
