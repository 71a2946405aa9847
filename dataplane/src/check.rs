//! `portdistrict-dataplane --check`: what this machine offers the dataplane, found by
//! trying each thing the way the dataplane uses it: io_uring with the features the
//! reactor needs, a TUN device with TSO/USO offloads (a temporary one, gone when the
//! check ends), UDP GSO/GRO on a socket bound to an ephemeral port, loading the XDP
//! program (not attaching it), and the AVX-512 IFMA crypto. Nothing on the machine
//! changes.

use serde_json::{json, Value};

/// One capability: available, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// What was checked.
    pub name: &'static str,
    /// `Ok(detail)` when available.
    pub result: Result<String, String>,
}

/// Every check, in the order shown.
pub fn run() -> Vec<Found> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .map_err(|e| e.to_string());
    vec![
        Found {
            name: "kernel",
            result: kernel,
        },
        Found {
            name: "io_uring",
            result: crate::io::Reactor::probe()
                .map(|()| "the reactor's features are there".to_owned())
                .map_err(|e| format!("{e} (the poll(2) loop is used instead)")),
        },
        Found {
            name: "tun_offload",
            result: tun_offload(),
        },
        Found {
            name: "udp_gso_gro",
            result: udp_offload(),
        },
        Found {
            name: "xdp",
            result: portdistrict_ebpf::XdpProgram::load()
                .map(|_| "the program loads (it attaches when an interface starts)".to_owned())
                .map_err(|e| format!("{e} (interfaces run without XDP)")),
        },
        Found {
            name: "avx512_crypto",
            result: if portdistrict_aead::available() {
                Ok("AVX-512 IFMA ChaCha20-Poly1305".to_owned())
            } else {
                Err("no AVX-512 IFMA: ring's ChaCha20-Poly1305 is used".to_owned())
            },
        },
    ]
}

/// TSO and USO on a temporary TUN device.
fn tun_offload() -> Result<String, String> {
    let name = format!("pdchk{}", std::process::id() % 100_000);
    let tun = crate::io::Tun::create_offloaded(&name)
        .map_err(|e| format!("{e} (a TUN device needs CAP_NET_ADMIN; offloads are then off)"))?;
    let o = tun.offload();
    drop(tun);
    match (o.tso, o.uso) {
        (true, true) => Ok("TSO and USO".to_owned()),
        (true, false) => Ok("TSO (no USO: UDP inside the tunnel is not segmented)".to_owned()),
        _ => Err("the kernel takes no TUN offloads".to_owned()),
    }
}

/// `UDP_GRO` (and with it `UDP_SEGMENT`) on sockets bound to an ephemeral port.
fn udp_offload() -> Result<String, String> {
    let s = crate::io::UdpSockets::bind(0, 0).map_err(|e| e.to_string())?;
    if s.set_offload(true) {
        Ok("GSO and GRO".to_owned())
    } else {
        Err("UDP_GRO refused: one datagram per system call".to_owned())
    }
}

/// The text `--check` prints.
pub fn text(found: &[Found]) -> String {
    let mut out = String::new();
    for f in found {
        let line = match &f.result {
            Ok(d) => format!("{:<14} yes: {d}\n", format!("{}:", f.name)),
            Err(e) => format!("{:<14} no: {e}\n", format!("{}:", f.name)),
        };
        out.push_str(&line);
    }
    out
}

/// The JSON `--check --json` prints: `{name: {"ok": bool, "detail": text}}`.
pub fn json(found: &[Found]) -> Value {
    let mut m = serde_json::Map::new();
    for f in found {
        let (ok, detail) = match &f.result {
            Ok(d) => (true, d.clone()),
            Err(e) => (false, e.clone()),
        };
        m.insert(f.name.to_owned(), json!({"ok": ok, "detail": detail}));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_is_reported_and_the_kernel_is_known() {
        let found = run();
        let v = json(&found);
        for name in [
            "kernel",
            "io_uring",
            "tun_offload",
            "udp_gso_gro",
            "xdp",
            "avx512_crypto",
        ] {
            assert!(v[name]["ok"].is_boolean(), "{name}: {v}");
        }
        assert_eq!(v["kernel"]["ok"], true);
        let t = text(&found);
        assert!(t.starts_with("kernel:"), "{t}");
        // UDP offloads need no privilege: on Linux 5.0+ (and this suite's kernels)
        // they are there.
        assert_eq!(v["udp_gso_gro"]["ok"], true, "{v}");
    }
}
