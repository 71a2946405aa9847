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

use anyhow::{bail, Context as _};
use portdistrict_control::ctl::{self, PeerVerb, Request};
use portdistrict_control::{consumer, device, exit, node, serve, tunnels, Dirs};

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
            std::process::exit(2);
        }
    }
}

const USAGE: &str = "usage: portdistrict [--state-dir DIR] [--run-dir DIR] COMMAND

Commands:
  exit serve --uplink IFACE [--endpoint HOST:PORT ...] [--interface pdexit0]
             [--listen-port 51820] [--channel-port PORT] [--ipv6 auto|on|off]
             [--dns-upstream IP[:PORT]] [--control-group GROUP] [--attestation DIR]
             [--attestation-root HEX ...]
                        run the exit node until SIGTERM (dataplane, NAT, the exit
                        channel on TCP, DNS forwarder on 100.64.0.1); --endpoint: what
                        invites carry; --control-group: who besides root may use
                        RUN_DIR/exit.sock
  exit invite [--endpoint HOST:PORT ...] [--expires 24h] [--uses 1]
              [--measurement HEX [--min-abi MAJOR.MINOR] [--smt any|forbidden]]
                        print a new invite (portdistrict-invite1:...) and record it;
                        --measurement: consumers require an attestation of that image
  exit invite --format wg-quick [--qr] [--endpoint HOST:PORT] [--expires 24h]
                        a wg-quick config for a stock WireGuard client (phones):
                        its key made here and authorized at once; NO kill switch
  exit grant --measurement HEX [--min-abi MAJOR.MINOR] [--smt any|forbidden]
             [--expires 365d] [--to NODE_ID | --out FILE] [--passphrase-file F]
                        a grant signed by this identity pinning an attested exit's
                        measurement and policy, for one peer or whoever holds it
  exit attestation-data [--json]
                        the report data this exit's SEV-SNP report must carry (binds
                        its Noise and WireGuard keys), for the tooling that makes it
  exit list [--json]    issued invites and authorized consumers
  exit revoke CONSUMER|TOKEN
                        revoke a consumer (WireGuard public key or inner address) or
                        an invite (its token as `exit list` shows it)
  use INVITE --mode system [--allow-lan] [--interface pduse0]
             [--dns auto|resolvectl|resolvconf|file|none]
             [--resolv-conf /etc/resolv.conf|none] [--timeout 20s]
             [--grant FILE ...] [--attestation-root HEX ...]
                        send all traffic through the provider behind a kill switch;
                        returns once traffic flows (again: repairs or confirms);
                        --grant: require the exit's attestation to match it
  use status [--json]   what system mode applied and how the tunnel is
  use off               put routes, rules, sysctls, firewall and DNS back as they were
                        (under lockdown everything stays blocked)
  use lockdown on|off|status
                        block everything but the tunnel, even with no tunnel up,
                        until turned off (kept across reboots)
  use restore           put the kill switch (or lockdown) back from the saved state:
                        what portdistrict-killswitch.service runs at boot
  identity init --namespace NS [--passphrase-file F | --key-file F]
                        create this node's identity (seed sealed under a passphrase,
                        or unencrypted in F for headless servers)
  identity show [--json]
                        node ID, namespace, fingerprint, overlay prefix
  identity bundle [--passphrase-file F]
                        print this identity as one portdistrict-id1:... line
  peer add BUNDLE       record a peer's identity (SEEN)
  peer verify NODE --fingerprint FP
                        compare its fingerprint (read out of band): VERIFIED
  peer trust NODE | peer demote NODE | peer revoke NODE | peer forget NODE
  peer list [--json] | peer show NODE [--json]
  device init --name NAME [--passphrase-file F]
                        this machine's device of the identity (delegated by it)
  device list [--json]  this machine's device and the roster
  device request --name NAME --namespace NS
                        on a machine without the identity's secret: a device asking
                        to join (prints portdistrict-dev1:...)
  device roster add REQUEST [--passphrase-file F]
                        on the machine with the secret: delegate it (prints the
                        identity bundle for the device)
  device join BUNDLE    on the device: complete the request
  device roster remove NAME
  tunnel list [--json] | tunnel show NAME [--json]
                        peer devices portdistrictd connected (device.namespace)
  tunnel disconnect NAME | tunnel connect NAME
                        take one off now (and keep it off) / let it come back
  status [--json]       identity, device, daemon, peers, tunnels
  facilitator serve --listen ADDR:PORT [--relay-ports LO-HI] [--relay-rate BYTES]
                    [--relay-idle SECONDS] [--max-nodes N]
                        the NAT-traversal facilitator (and relay) on a public address
  facilitator show [--json]
                        its public key and listen address, for nodes' --facilitator
  attest verify REPORT --vcek CERT --chain PEM [--measurement HEX]
                [--report-data HEX] [--now RFC3339] [--root-fingerprint HEX ...]
                [--min-abi MAJOR.MINOR] [--smt any|forbidden] [--vmpl N] [--json]
                        verify an SEV-SNP attestation report offline: every check and
                        the report's fields; exit 0 only when every check passes

Options:
  --state-dir DIR       persistent state (default /var/lib/portdistrict)
  --run-dir DIR         runtime files (default /run/portdistrict)

While exit serve or portdistrictd runs, exit invite|list|revoke, peer add|verify|
trust|demote|revoke|forget, tunnel connect|disconnect and device roster add|remove
are carried out by it (RUN_DIR/exit.sock, RUN_DIR/portdistrictd.sock); without one, here.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `exit serve` is a daemon: its progress is info; one-shot commands print their
    // results themselves and log only warnings.
    let serving = args.windows(2).any(|w| {
        matches!(
            (w[0].as_str(), w[1].as_str()),
            ("exit" | "facilitator", "serve")
        )
    });
    portdistrict_logging::init(
        "portdistrict",
        if serving {
            tracing::Level::INFO
        } else {
            tracing::Level::WARN
        },
    );
    if let Err(e) = run(&args) {
        eprintln!("portdistrict: {e:#}");
        std::process::exit(2);
    }
}

/// A line of a command's own output besides its result, on stderr.
fn say(line: &str) {
    eprintln!("portdistrict: {line}");
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let (dirs, rest) = parse_dirs(args)?;
    match rest
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] | ["help" | "--help" | "-h"] => {
            outln!("{USAGE}");
            Ok(())
        }
        ["exit", "invite", opts @ ..] => {
            let o = exit::InviteOptions::parse(opts)?;
            let line = via_exit(
                &dirs,
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
        ["facilitator", "serve", opts @ ..] => portdistrict_control::facilitator::serve(
            &dirs,
            &portdistrict_control::facilitator::ServeOptions::parse(opts)?,
        ),
        ["attest", "verify", opts @ ..] => {
            let (text, verdict) = portdistrict_control::attest::verify(
                &portdistrict_control::attest::VerifyOptions::parse(opts)?,
            )?;
            outln!("{text}");
            match verdict.first_failure() {
                None => Ok(()),
                Some((check, e)) => bail!("attestation refused: {}: {e}", check.name()),
            }
        }
        ["facilitator", "show", rest @ ..] => {
            let json = match rest {
                [] => false,
                ["--json"] => true,
                _ => bail!("facilitator show: only --json is accepted"),
            };
            outln!("{}", portdistrict_control::facilitator::show(&dirs, json)?);
            Ok(())
        }
        ["exit", "serve", opts @ ..] => {
            serve::serve(&dirs, &serve::ServeOptions::parse(opts)?, &say)
        }
        ["exit", "grant", opts @ ..] => {
            outln!(
                "{}",
                portdistrict_control::attest::grant(
                    &dirs,
                    &portdistrict_control::attest::GrantOptions::parse(opts)?
                )?
            );
            Ok(())
        }
        ["exit", "attestation-data", rest @ ..] => {
            let json = match rest {
                [] => false,
                ["--json"] => true,
                _ => bail!("exit attestation-data: only --json is accepted"),
            };
            outln!("{}", exit::attestation_data(&dirs, json)?);
            Ok(())
        }
        ["exit", "list", rest @ ..] => {
            let json = json_flag(rest)?;
            out!("{}", via_exit(&dirs, &Request::ExitList { json })?);
            Ok(())
        }
        ["exit", "revoke", who] => {
            let what = via_exit(
                &dirs,
                &Request::ExitRevoke {
                    who: who.to_string(),
                },
            )?;
            outln!("revoked {what}");
            Ok(())
        }
        ["identity", "init", opts @ ..] => {
            let (secret, rest) = node::SecretOptions::take(opts)?;
            let ns = match rest.as_slice() {
                ["--namespace", ns] => *ns,
                _ => bail!("identity init needs --namespace NS (a DNS name you can publish under, like alice.example.net)"),
            };
            out!("{}", node::init(&dirs, ns, &secret, exit::now())?);
            Ok(())
        }
        ["identity", "show", rest @ ..] => {
            out!("{}", node::show(&dirs, json_flag(rest)?)?);
            Ok(())
        }
        ["identity", "bundle", opts @ ..] => {
            let (secret, rest) = node::SecretOptions::take(opts)?;
            if !rest.is_empty() {
                bail!("identity bundle: unknown option {}", rest[0]);
            }
            outln!("{}", node::bundle(&dirs, &secret)?);
            Ok(())
        }
        ["device", "init", opts @ ..] => {
            let (secret, rest) = node::SecretOptions::take(opts)?;
            let name = match rest.as_slice() {
                ["--name", n] => *n,
                _ => bail!("device init needs --name NAME (one DNS label, like laptop)"),
            };
            out!("{}", device::init(&dirs, name, &secret)?);
            Ok(())
        }
        ["tunnel", "list", rest @ ..] => {
            out!("{}", tunnels::list(&dirs, json_flag(rest)?)?);
            Ok(())
        }
        ["tunnel", "show", name] => {
            out!("{}", tunnels::show(&dirs, name, false)?);
            Ok(())
        }
        ["tunnel", "show", name, "--json"] | ["tunnel", "show", "--json", name] => {
            out!("{}", tunnels::show(&dirs, name, true)?);
            Ok(())
        }
        ["tunnel", verb @ ("connect" | "disconnect"), name] => {
            let request = Request::TunnelSet {
                name: name.to_string(),
                connect: *verb == "connect",
            };
            outln!("{}", via_daemon(&dirs, &request)?);
            Ok(())
        }
        ["status", rest @ ..] => {
            out!("{}", tunnels::status(&dirs, json_flag(rest)?)?);
            Ok(())
        }
        ["device", "request", "--name", name, "--namespace", ns] => {
            outln!("{}", device::request(&dirs, name, ns)?);
            Ok(())
        }
        ["device", "roster", "add", request, opts @ ..] => {
            let (secret, rest) = node::SecretOptions::take(opts)?;
            if !rest.is_empty() {
                bail!("device roster add: unknown option {}", rest[0]);
            }
            let request = Request::RosterAdd {
                line: request.to_string(),
            };
            let out =
                ctl::handle::via_daemon_unlocking(&dirs, ctl::Daemon::Control, &request, &secret)?;
            outln!("{out}");
            Ok(())
        }
        ["device", "join", bundle] => {
            outln!("{}", device::join(&dirs, bundle)?);
            Ok(())
        }
        ["device", "list", rest @ ..] => {
            out!("{}", device::list(&dirs, json_flag(rest)?)?);
            Ok(())
        }
        ["device", "roster", "remove", name] => {
            let request = Request::RosterRemove {
                name: name.to_string(),
            };
            outln!("{}", via_daemon(&dirs, &request)?);
            Ok(())
        }
        ["peer", "add", bundle] => {
            let request = Request::PeerAdd {
                bundle: bundle.to_string(),
            };
            outln!("{}", via_daemon(&dirs, &request)?);
            Ok(())
        }
        ["peer", "list", rest @ ..] => {
            out!("{}", node::peer_list(&dirs, json_flag(rest)?)?);
            Ok(())
        }
        ["peer", "show", who, rest @ ..] => {
            out!("{}", node::peer_show(&dirs, who, json_flag(rest)?)?);
            Ok(())
        }
        ["peer", "verify", who, "--fingerprint", fp] => {
            let request = Request::PeerChange {
                verb: PeerVerb::Verify,
                who: who.to_string(),
                fingerprint: Some(fp.to_string()),
            };
            outln!("{}", via_daemon(&dirs, &request)?);
            Ok(())
        }
        ["peer", verb @ ("trust" | "demote" | "revoke" | "forget" | "verify"), who] => {
            let request = Request::PeerChange {
                verb: PeerVerb::from_word(verb).context("a peer verb")?,
                who: who.to_string(),
                fingerprint: None,
            };
            outln!("{}", via_daemon(&dirs, &request)?);
            Ok(())
        }
        ["use", "off"] => {
            outln!("{}", consumer::off(&dirs)?);
            Ok(())
        }
        ["use", "restore"] => {
            outln!("{}", consumer::restore(&dirs)?);
            Ok(())
        }
        ["use", "lockdown", what] => {
            outln!(
                "{}",
                consumer::lockdown(&dirs, consumer::LockdownCommand::parse(what)?)?
            );
            Ok(())
        }
        ["use", "lockdown", ..] => bail!("use lockdown takes one of on, off, status"),
        ["use", "status", rest @ ..] => {
            out!("{}", consumer::status(&dirs, json_flag(rest)?)?);
            Ok(())
        }
        ["use", opts @ ..] => {
            outln!(
                "{}",
                consumer::use_exit(&dirs, &consumer::UseOptions::parse(opts)?, &say)?
            );
            Ok(())
        }
        _ => bail!("unknown command {:?}\n\n{USAGE}", rest.join(" ")),
    }
}

/// Runs an exit command through a running `exit serve`, or here when none runs.
fn via_exit(dirs: &Dirs, request: &Request) -> anyhow::Result<String> {
    ctl::handle::via_daemon(dirs, ctl::Daemon::Exit, request)
}

/// Runs a command through a running `portdistrictd`, or here when none runs.
fn via_daemon(dirs: &Dirs, request: &Request) -> anyhow::Result<String> {
    ctl::handle::via_daemon(dirs, ctl::Daemon::Control, request)
}

/// `[]` or `["--json"]`.
fn json_flag(rest: &[&str]) -> anyhow::Result<bool> {
    match rest {
        [] => Ok(false),
        ["--json"] => Ok(true),
        _ => bail!("unknown option {:?} (only --json)", rest.join(" ")),
    }
}

/// Takes `--state-dir` and `--run-dir` (anywhere on the line) off the arguments.
fn parse_dirs(args: &[String]) -> anyhow::Result<(Dirs, Vec<String>)> {
    Dirs::from_args(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn dirs_anywhere_on_the_line() {
        let (d, rest) = parse_dirs(&v(&[
            "exit",
            "--state-dir",
            "/s",
            "list",
            "--run-dir",
            "/r",
        ]))
        .unwrap();
        assert_eq!(d.state, std::path::PathBuf::from("/s"));
        assert_eq!(d.run, std::path::PathBuf::from("/r"));
        assert_eq!(rest, ["exit", "list"]);
        assert!(parse_dirs(&v(&["--state-dir"])).is_err());
    }

    #[test]
    fn unknown_commands_are_named() {
        let e = run(&v(&["frobnicate"])).unwrap_err();
        assert!(e.to_string().contains("frobnicate"));
    }
}
