//! `portdistrictd`: the control daemon (see `portdistrict_control::daemon`).
#![forbid(unsafe_code)]

use clap::{CommandFactory as _, FromArgMatches as _};
use portdistrict_control::daemon::{Daemon, DaemonArgs, DaemonOptions, DEFAULT_CONFIG};
use portdistrict_control::Dirs;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn main() {
    // Usage errors, --help and --version end here (status 2, 0).
    let m = DaemonArgs::command().get_matches();
    let args = DaemonArgs::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
    portdistrict_logging::init("portdistrictd", tracing::Level::INFO);
    let o = match DaemonOptions::from_matches(&m, Some(DEFAULT_CONFIG.as_ref())) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("portdistrictd: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = portdistrict_control::need_root("portdistrictd")
        .and_then(|()| run(Dirs::from(args.dirs), o))
    {
        eprintln!("portdistrictd: {e:#}");
        std::process::exit(1);
    }
}

fn run(dirs: Dirs, o: DaemonOptions) -> anyhow::Result<()> {
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))?;
    }
    let mut d = Daemon::new(dirs, o)?;
    d.run(&term)
}
