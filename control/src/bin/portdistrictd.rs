//! `portdistrictd`: the control daemon (see `portdistrict_control::daemon`).
#![forbid(unsafe_code)]

use portdistrict_control::daemon::{Daemon, DaemonOptions};
use portdistrict_control::Dirs;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const USAGE: &str = "usage: portdistrictd [--state-dir DIR] [--run-dir DIR] [--config FILE]
        --dns-server IP[:PORT] --zone ZONE --tsig-key NAME --tsig-secret-file FILE
        [--resolver IP[:PORT]] [--passphrase-file FILE] [--interface pd0]
        [--listen-port 51820] [--endpoint IP:PORT ...] [--interval 30s]
        [--record-lifetime 1h] [--control-group GROUP] [--once]

Publishes this identity's records in DNS (RFC 2136 + TSIG), reads its trusted peers'
records and connects this device's tunnel to every trusted device, every interval,
until SIGTERM; --once runs one cycle and exits. --config FILE holds the same settings
as `name = value` lines (flags win).

Records are valid for --record-lifetime (at least 10s; keep it well above --interval).
A peer record that fails (altered, expired, unreachable, or older than one already
seen: a rollback) keeps that peer's devices connected only until the last record that
verified there expires. The TSIG key may be this device's own: it only updates
_portdistrict.DEVICE.NAMESPACE, and on the device holding the identity's seed also
_portdistrict.NAMESPACE and _portdistrict-trust.NAMESPACE.

Unless --once, it listens on RUN_DIR/portdistrictd.sock (mode 0660) for the CLI's
peer, tunnel connect|disconnect and roster remove commands: root, or members of
--control-group GROUP.";

fn main() {
    portdistrict_logging::init("portdistrictd", tracing::Level::INFO);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.first().map(String::as_str), Some("-h" | "--help")) {
        println!("{USAGE}");
        return;
    }
    if let Err(e) = run(&args) {
        eprintln!("portdistrictd: {e:#}");
        std::process::exit(2);
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let (dirs, rest) = Dirs::from_args(args)?;
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let o = DaemonOptions::parse(&rest)?;
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))?;
    }
    let mut d = Daemon::new(dirs, o)?;
    d.run(&term)
}
