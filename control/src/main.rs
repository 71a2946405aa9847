//! `portdistrict`, the command line of portdistrict.
//!
//! The consumer: `portdistrict use INVITE --mode system [--allow-lan]` sends all
//! traffic through the provider behind a kill switch and returns once it flows;
//! `use status`; `use off` puts the machine back as it was; `use lockdown on|off|status`
//! blocks everything but the tunnel even without one; `use restore` (the boot unit's
//! command) puts the kill switch back from the state after a reboot.
//!
//! The provider: `portdistrict exit serve --uplink IFACE` runs the exit
//! node until SIGTERM; the other exit commands work on the state directory (through `exit serve` while it runs):
//!
//! - `portdistrict exit invite --endpoint HOST:PORT [--endpoint ...] [--expires 24h]
//!   [--uses 1] [--measurement HEX ...]` prints one `portdistrict-invite1:` line and
//!   records the invite; `--format wg-quick [--qr]` prints a stock WireGuard client's
//!   config instead (a key made and authorized at once; no kill switch);
//! - `portdistrict exit list` shows issued invites and authorized consumers;
//! - `portdistrict exit revoke CONSUMER` (its WireGuard public key or inner address)
//!   takes a consumer's authorization away.
//!
//! Every command takes `--state-dir DIR` (default `/var/lib/portdistrict`) and
//! `--run-dir DIR` (default `/run/portdistrict`). While `exit serve` or `portdistrictd`
//! runs, the commands that change what it reads go through its control socket
//! (`portdistrict_control::ctl`); only when no daemon listens do they edit the state.
#![forbid(unsafe_code)]

use anyhow::bail;
use clap::{CommandFactory as _, Parser as _};
use portdistrict_control::cli::{
    AttestCommand, Cli, Command, DeviceCommand, ExitCommand, FacilitatorCommand, IdentityCommand,
    PeerCommand, RosterCommand, TunnelCommand, UseSub,
};
use portdistrict_control::ctl::{self, PeerVerb, Request};
use portdistrict_control::{attest, consumer, device, exit, facilitator, node, serve, tunnels};
use portdistrict_control::{Dirs, UsageError};

/// `print!` to stdout that ends the program quietly when stdout is closed early (a
/// reader such as `head` went away) instead of panicking; the exit status is 141,
/// as for a process killed by SIGPIPE.
macro_rules! out {
    ($($t:tt)*) => { emit(format_args!($($t)*), false) };
}

/// `println!`, the same way (see [`out!`]).
macro_rules! outln {
    ($($t:tt)*) => { emit(format_args!($($t)*), true) };
}

fn emit(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    let r = o
        .write_fmt(args)
        .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| o.flush());
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
        Err(e) => {
            eprintln!("portdistrict: writing to standard output: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    // Usage errors (and --help, --version) end here: status 2 (0 for help).
    let cli = Cli::parse();
    // `exit serve` is a daemon: its progress is info; one-shot commands print their
    // results themselves and log only warnings.
    let serving = matches!(
        cli.command,
        Command::Exit(ExitCommand::Serve(_)) | Command::Facilitator(FacilitatorCommand::Serve(_))
    );
    portdistrict_logging::init(
        "portdistrict",
        if serving {
            tracing::Level::INFO
        } else {
            tracing::Level::WARN
        },
    );
    let dirs = Dirs::from(cli.dirs);
    if let Err(e) = run(&dirs, cli.command) {
        eprintln!("portdistrict: {e:#}");
        let usage = e.downcast_ref::<UsageError>().is_some();
        std::process::exit(if usage { 2 } else { 1 });
    }
}

/// A line of a command's own output besides its result, on stderr.
fn say(line: &str) {
    eprintln!("portdistrict: {line}");
}

/// An option's value that does not check out: a usage error.
fn usage<T>(r: anyhow::Result<T>) -> anyhow::Result<T> {
    r.map_err(|e| e.context(UsageError))
}

fn run(dirs: &Dirs, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Exit(c) => run_exit(dirs, c),
        Command::Use(u) => run_use(dirs, u.sub, u.args),
        Command::Identity(c) => run_identity(dirs, c),
        Command::Peer(c) => run_peer(dirs, c),
        Command::Device(c) => run_device(dirs, c),
        Command::Tunnel(c) => run_tunnel(dirs, c),
        Command::Status(j) => {
            out!("{}", portdistrict_control::status::status(dirs, j.json)?);
            Ok(())
        }
        Command::Facilitator(FacilitatorCommand::Serve(a)) => {
            facilitator::serve(dirs, &usage(facilitator::ServeOptions::from_args(a))?)
        }
        Command::Facilitator(FacilitatorCommand::Show(j)) => {
            outln!("{}", facilitator::show(dirs, j.json)?);
            Ok(())
        }
        Command::Attest(AttestCommand::Verify(a)) => {
            let (text, verdict) = attest::verify(&usage(attest::VerifyOptions::from_args(a))?)?;
            outln!("{text}");
            match verdict.first_failure() {
                None => Ok(()),
                Some((check, e)) => bail!("attestation refused: {}: {e}", check.name()),
            }
        }
        Command::Ping { target, count } => {
            let p = portdistrict_control::ping::ping(dirs, &target, count)?;
            out!("{}", p.text);
            if !p.answered {
                bail!("no answer from {target}");
            }
            Ok(())
        }
        Command::Netcheck { facilitator, json } => {
            out!(
                "{}",
                portdistrict_control::netcheck::netcheck(dirs, facilitator.as_deref(), json.json)?
            );
            Ok(())
        }
        Command::Bugreport { output } => {
            let path = portdistrict_control::bugreport::bugreport(dirs, output)?;
            outln!(
                "wrote {} (secrets redacted; read it before you share it)",
                path.display()
            );
            Ok(())
        }
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "portdistrict", &mut buf);
            out!("{}", String::from_utf8_lossy(&buf));
            Ok(())
        }
        Command::DistFiles { dir } => {
            use portdistrict_control::cli::write_manpages;
            use portdistrict_control::daemon::DaemonArgs;
            let n = write_manpages(Cli::command(), &dir)?
                + write_manpages(DaemonArgs::command(), &dir)?;
            for shell in [
                clap_complete::Shell::Bash,
                clap_complete::Shell::Zsh,
                clap_complete::Shell::Fish,
            ] {
                clap_complete::generate_to(shell, &mut Cli::command(), "portdistrict", &dir)?;
                clap_complete::generate_to(
                    shell,
                    &mut DaemonArgs::command(),
                    "portdistrictd",
                    &dir,
                )?;
            }
            outln!(
                "{n} man pages and 6 completion scripts in {}",
                dir.display()
            );
            Ok(())
        }
    }
}

fn run_exit(dirs: &Dirs, c: ExitCommand) -> anyhow::Result<()> {
    match c {
        ExitCommand::Serve(a) => {
            let o = usage(serve::ServeOptions::from_args(a))?;
            portdistrict_control::need_root("portdistrict exit serve")?;
            serve::serve(dirs, &o, &say)
        }
        ExitCommand::Invite(a) => {
            let o = usage(exit::InviteOptions::from_args(a))?;
            let line = via_exit(
                dirs,
                &Request::ExitInvite {
                    pin: o.pin_request(),
                    format: (o.format != exit::InviteFormat::Line)
                        .then(|| o.format.name().to_owned()),
                    qr: o.qr,
                    endpoints: o.endpoints,
                    expires_secs: o.expires.as_secs(),
                    uses: o.uses,
                },
            )?;
            outln!("{line}");
            Ok(())
        }
        ExitCommand::Grant(a) => {
            let o = usage(attest::GrantOptions::from_args(a))?;
            outln!("{}", attest::grant(dirs, &o)?);
            Ok(())
        }
        ExitCommand::AttestationData(j) => {
            outln!("{}", exit::attestation_data(dirs, j.json)?);
            Ok(())
        }
        ExitCommand::List(j) => {
            out!("{}", via_exit(dirs, &Request::ExitList { json: j.json })?);
            Ok(())
        }
        ExitCommand::Revoke { who } => {
            let what = via_exit(dirs, &Request::ExitRevoke { who })?;
            outln!("revoked {what}");
            Ok(())
        }
    }
}

fn run_use(dirs: &Dirs, sub: Option<UseSub>, args: consumer::UseArgs) -> anyhow::Result<()> {
    match sub {
        None => {
            let o = usage(consumer::UseOptions::from_args(args))?;
            portdistrict_control::need_root("portdistrict use")?;
            outln!("{}", consumer::use_exit(dirs, &o, &say)?);
        }
        Some(UseSub::Status(j)) => out!("{}", consumer::status(dirs, j.json)?),
        Some(UseSub::Off) => {
            portdistrict_control::need_root("portdistrict use off")?;
            outln!("{}", consumer::off(dirs)?);
        }
        Some(UseSub::Restore) => {
            portdistrict_control::need_root("portdistrict use restore")?;
            outln!("{}", consumer::restore(dirs)?);
        }
        Some(UseSub::Lockdown { what }) => {
            if what != consumer::LockdownCommand::Status {
                portdistrict_control::need_root("portdistrict use lockdown")?;
            }
            outln!("{}", consumer::lockdown(dirs, what)?);
        }
    }
    Ok(())
}

fn run_identity(dirs: &Dirs, c: IdentityCommand) -> anyhow::Result<()> {
    match c {
        IdentityCommand::Init { namespace, secret } => {
            out!(
                "{}",
                node::init(dirs, &namespace, &secret.into(), exit::now())?
            );
        }
        IdentityCommand::Show(j) => out!("{}", node::show(dirs, j.json)?),
        IdentityCommand::Bundle(secret) => outln!("{}", node::bundle(dirs, &secret.into())?),
    }
    Ok(())
}

fn run_peer(dirs: &Dirs, c: PeerCommand) -> anyhow::Result<()> {
    let change = |verb, who: String, fingerprint| Request::PeerChange {
        verb,
        who,
        fingerprint,
    };
    let request = match c {
        PeerCommand::List(j) => {
            out!("{}", node::peer_list(dirs, j.json)?);
            return Ok(());
        }
        PeerCommand::Show { node: who, json } => {
            out!("{}", node::peer_show(dirs, &who, json.json)?);
            return Ok(());
        }
        PeerCommand::Add { bundle } => Request::PeerAdd { bundle },
        PeerCommand::Verify { node, fingerprint } => change(PeerVerb::Verify, node, fingerprint),
        PeerCommand::Trust { node } => change(PeerVerb::Trust, node, None),
        PeerCommand::Demote { node } => change(PeerVerb::Demote, node, None),
        PeerCommand::Revoke { node } => change(PeerVerb::Revoke, node, None),
        PeerCommand::Forget { node } => change(PeerVerb::Forget, node, None),
    };
    outln!("{}", via_daemon(dirs, &request)?);
    Ok(())
}

fn run_device(dirs: &Dirs, c: DeviceCommand) -> anyhow::Result<()> {
    match c {
        DeviceCommand::Init { name, secret } => {
            out!("{}", device::init(dirs, &name, &secret.into())?);
        }
        DeviceCommand::List(j) => out!("{}", device::list(dirs, j.json)?),
        DeviceCommand::Request { name, namespace } => {
            outln!("{}", device::request(dirs, &name, &namespace)?);
        }
        DeviceCommand::Join { bundle } => outln!("{}", device::join(dirs, &bundle)?),
        DeviceCommand::Roster(RosterCommand::Add { request, secret }) => {
            let request = Request::RosterAdd { line: request };
            let out = ctl::handle::via_daemon_unlocking(
                dirs,
                ctl::Daemon::Control,
                &request,
                &secret.into(),
            )?;
            outln!("{out}");
        }
        DeviceCommand::Roster(RosterCommand::Remove { name }) => {
            outln!("{}", via_daemon(dirs, &Request::RosterRemove { name })?);
        }
    }
    Ok(())
}

fn run_tunnel(dirs: &Dirs, c: TunnelCommand) -> anyhow::Result<()> {
    match c {
        TunnelCommand::List(j) => out!("{}", tunnels::list(dirs, j.json)?),
        TunnelCommand::Show { name, json } => out!("{}", tunnels::show(dirs, &name, json.json)?),
        TunnelCommand::Connect { name } => {
            let request = Request::TunnelSet {
                name,
                connect: true,
            };
            outln!("{}", via_daemon(dirs, &request)?);
        }
        TunnelCommand::Disconnect { name } => {
            let request = Request::TunnelSet {
                name,
                connect: false,
            };
            outln!("{}", via_daemon(dirs, &request)?);
        }
    }
    Ok(())
}

/// Runs an exit command through a running `exit serve`, or here when none runs.
fn via_exit(dirs: &Dirs, request: &Request) -> anyhow::Result<String> {
    ctl::handle::via_daemon(dirs, ctl::Daemon::Exit, request)
}

/// Runs a command through a running `portdistrictd`, or here when none runs.
fn via_daemon(dirs: &Dirs, request: &Request) -> anyhow::Result<String> {
    ctl::handle::via_daemon(dirs, ctl::Daemon::Control, request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_option_that_does_not_check_out_is_a_usage_error() {
        let cli = Cli::try_parse_from([
            "portdistrict",
            "--state-dir",
            "/nonexistent-pd-test",
            "exit",
            "invite",
            "--qr",
        ])
        .unwrap();
        let e = run(&Dirs::from(cli.dirs), cli.command).unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some(), "{e:#}");
        assert!(format!("{e:#}").contains("--format wg-quick"), "{e:#}");
    }
}
