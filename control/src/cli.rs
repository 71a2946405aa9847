//! The grammar of `portdistrict` (clap): every command, its options and their help.
//! The commands' options are checked into their option types where they are used
//! ([`crate::serve::ServeOptions::from_args`], ...): an error there names the option
//! and what it takes, and is a usage error (exit status 2) like clap's own.

use crate::{attest, consumer, exit, facilitator, node, serve, Dirs};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// What `--help` shows after the commands.
const AFTER_HELP: &str = "\
While `exit serve` or portdistrictd runs, exit invite|list|revoke, peer add|verify|trust|\
demote|revoke|forget, tunnel connect|disconnect and device roster add|remove are carried \
out by it (RUN_DIR/exit.sock, RUN_DIR/portdistrictd.sock); without one, here.

Exit status: 0 on success, 1 when the command failed, 2 for a usage error.";

/// portdistrict: WireGuard exit nodes behind a kill switch, and a mesh of trusted
/// machines found through DNS.
#[derive(Debug, Parser)]
#[command(name = "portdistrict", version, propagate_version = true, after_help = AFTER_HELP)]
pub struct Cli {
    /// The directories.
    #[command(flatten)]
    pub dirs: DirArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The state and runtime directories, on every command.
#[derive(Debug, Clone, Args)]
pub struct DirArgs {
    /// Persistent state (identity, exit store, system mode's saved state)
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/var/lib/portdistrict",
        overrides_with = "state_dir"
    )]
    pub state_dir: PathBuf,
    /// Runtime files (control sockets, dataplane sockets)
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/run/portdistrict",
        overrides_with = "run_dir"
    )]
    pub run_dir: PathBuf,
}

impl From<DirArgs> for Dirs {
    fn from(d: DirArgs) -> Dirs {
        Dirs {
            state: d.state_dir,
            run: d.run_dir,
        }
    }
}

/// `--json`.
#[derive(Debug, Clone, Copy, Args)]
pub struct Json {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an exit node and manage its invites and consumers (provider)
    #[command(subcommand)]
    Exit(ExitCommand),
    /// Send all traffic through an exit node behind a kill switch (consumer)
    Use(UseCommand),
    /// This node's identity
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Other nodes' identities and how far they are trusted
    #[command(subcommand)]
    Peer(PeerCommand),
    /// This machine's device of the identity, and the identity's roster
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Tunnels portdistrictd connected to peer devices
    #[command(subcommand)]
    Tunnel(TunnelCommand),
    /// Everything this machine runs: identity, daemon, peers, tunnels, system mode,
    /// exit node
    Status(Json),
    /// The NAT-traversal facilitator and relay (on a public address)
    #[command(subcommand)]
    Facilitator(FacilitatorCommand),
    /// Verify SEV-SNP attestation reports offline
    #[command(subcommand)]
    Attest(AttestCommand),
    /// Is the tunnel to a peer (or, with `provider`, system mode's) there, and how fast:
    /// path, last handshake, and the round trip of probes through it
    Ping {
        /// A tunnel as `tunnel list` names it (or its first label), or `provider`
        #[arg(value_name = "PEER|provider")]
        target: String,
        /// How many probes (1 to 100)
        #[arg(long, short, value_name = "N", default_value_t = 3,
              value_parser = clap::value_parser!(u32).range(1..=100))]
        count: u32,
    },
    /// What this machine's network offers: its global addresses, whether the
    /// NAT-traversal facilitator answers a WireGuard handshake (and how fast), and what
    /// the dataplane can use (io_uring, offloads, XDP, AVX-512 crypto)
    Netcheck {
        /// The facilitator to try (default: `facilitator` in
        /// /etc/portdistrict/portdistrictd.toml)
        #[arg(long, value_name = "HOST:PORT:PUBLIC_KEY")]
        facilitator: Option<String>,
        /// Print JSON.
        #[command(flatten)]
        json: Json,
    },
    /// Write one file (mode 0600) with versions, status, counters, firewall, routing
    /// and the state files with secrets redacted, to attach to a bug report
    Bugreport {
        /// Where (default: ./portdistrict-bugreport-UNIXTIME.txt)
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Write the man pages (one per command, and portdistrictd's) and the bash, zsh
    /// and fish completions of portdistrict and portdistrictd into DIR (packaging)
    #[command(hide = true)]
    DistFiles {
        /// Where to write them
        dir: PathBuf,
    },
}

/// `exit ...`.
#[derive(Debug, Subcommand)]
pub enum ExitCommand {
    /// Run the exit node until SIGTERM: dataplane, NAT, the exit channel on TCP, a
    /// DNS forwarder on 100.64.0.1
    Serve(serve::ServeArgs),
    /// Print a new invite and record it
    Invite(exit::InviteArgs),
    /// Sign a grant pinning an attested exit's measurement and policy
    Grant(attest::GrantArgs),
    /// The report data this exit's SEV-SNP report must carry (binds its keys)
    AttestationData(Json),
    /// Issued invites and authorized consumers
    List(Json),
    /// Revoke a consumer (its WireGuard public key or inner address) or an invite
    /// (its token as `exit list` shows it)
    Revoke {
        /// CONSUMER or TOKEN
        #[arg(value_name = "CONSUMER|TOKEN")]
        who: String,
    },
}

/// `use INVITE --mode system ...` or `use status|off|lockdown|restore`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UseCommand {
    /// `status`, `off`, `lockdown` or `restore`, or none (bring the tunnel up).
    #[command(subcommand)]
    pub sub: Option<UseSub>,
    /// The invite and options when there is no subcommand.
    #[command(flatten)]
    pub args: consumer::UseArgs,
}

/// `use status|off|lockdown|restore`.
#[derive(Debug, Subcommand)]
pub enum UseSub {
    /// What system mode applied and how the tunnel is
    Status(Json),
    /// Put routes, rules, sysctls, firewall and DNS back as they were (under lockdown
    /// everything stays blocked)
    Off,
    /// Block everything but the tunnel, even with no tunnel up, until turned off
    /// (kept across reboots)
    Lockdown {
        /// on, off or status
        #[arg(value_enum)]
        what: consumer::LockdownCommand,
    },
    /// Put the kill switch (or lockdown) back from the saved state: what
    /// portdistrict-killswitch.service runs at boot
    Restore,
}

/// `identity ...`.
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Create this node's identity
    Init {
        /// A DNS name you can publish under, like alice.example.net
        #[arg(long, value_name = "NS")]
        namespace: String,
        /// How to unlock the identity.
        #[command(flatten)]
        secret: node::InitSecretArgs,
    },
    /// Node ID, namespace, fingerprint, overlay prefix
    Show(Json),
    /// Print this identity as one portdistrict-id1:... line for peers
    Bundle(node::PassphraseArg),
}

/// `peer ...`.
#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Record a peer's identity (SEEN)
    Add {
        /// The peer's portdistrict-id1:... line
        bundle: String,
    },
    /// Compare its fingerprint, read out of band: VERIFIED
    Verify {
        /// Node ID or namespace
        node: String,
        /// The fingerprint the peer read to you
        #[arg(long, value_name = "FP")]
        fingerprint: Option<String>,
    },
    /// Trust a verified peer: its devices get tunnels
    Trust {
        /// Node ID or namespace
        node: String,
    },
    /// Take trust away (back to VERIFIED)
    Demote {
        /// Node ID or namespace
        node: String,
    },
    /// Never trust this identity again
    Revoke {
        /// Node ID or namespace
        node: String,
    },
    /// Forget a peer
    Forget {
        /// Node ID or namespace
        node: String,
    },
    /// All peers
    List(Json),
    /// One peer
    Show {
        /// Node ID or namespace
        node: String,
        /// Print JSON.
        #[command(flatten)]
        json: Json,
    },
}

/// `device ...`.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// This machine's device of the identity (delegated by it)
    Init {
        /// One DNS label, like laptop
        #[arg(long, value_name = "NAME")]
        name: String,
        /// How to unlock the identity.
        #[command(flatten)]
        secret: node::PassphraseArg,
    },
    /// This machine's device and the roster
    List(Json),
    /// On a machine without the identity's secret: ask to join (prints
    /// portdistrict-dev1:...)
    Request {
        /// One DNS label, like laptop
        #[arg(long, value_name = "NAME")]
        name: String,
        /// The identity's namespace
        #[arg(long, value_name = "NS")]
        namespace: String,
    },
    /// The identity's roster of devices
    #[command(subcommand)]
    Roster(RosterCommand),
    /// On the device: complete the request with the bundle the roster printed
    Join {
        /// The identity bundle `device roster add` printed
        bundle: String,
    },
}

/// `device roster ...`.
#[derive(Debug, Subcommand)]
pub enum RosterCommand {
    /// On the machine with the secret: delegate a requesting device
    Add {
        /// The portdistrict-dev1:... line of `device request`
        request: String,
        /// How to unlock the identity.
        #[command(flatten)]
        secret: node::PassphraseArg,
    },
    /// Take a device off the roster
    Remove {
        /// Its name
        name: String,
    },
}

/// `tunnel ...`.
#[derive(Debug, Subcommand)]
pub enum TunnelCommand {
    /// Peer devices portdistrictd connected (device.namespace)
    List(Json),
    /// One tunnel
    Show {
        /// device.namespace
        name: String,
        /// Print JSON.
        #[command(flatten)]
        json: Json,
    },
    /// Let a disconnected tunnel come back
    Connect {
        /// device.namespace
        name: String,
    },
    /// Take a tunnel off now, and keep it off
    Disconnect {
        /// device.namespace
        name: String,
    },
}

/// `facilitator ...`.
#[derive(Debug, Subcommand)]
pub enum FacilitatorCommand {
    /// Run the facilitator (and relay) until SIGTERM
    Serve(facilitator::ServeArgs),
    /// Its public key and listen address, for nodes' --facilitator
    Show(Json),
}

/// `attest ...`.
#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Verify an SEV-SNP attestation report offline: every check and the report's
    /// fields; exit status 0 only when every check passes
    Verify(attest::VerifyArgs),
}

/// Writes a man page for `cmd` and one for each of its subcommands (recursively:
/// `portdistrict-exit-serve.1`) into `dir`; returns how many.
pub fn write_manpages(cmd: clap::Command, dir: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fn walk(cmd: clap::Command, prefix: &str, dir: &std::path::Path) -> anyhow::Result<usize> {
        use anyhow::Context as _;
        let name = if prefix.is_empty() {
            cmd.get_name().to_owned()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        let cmd = cmd.name(name.clone());
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        let mut n = 1;
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            n += walk(sub.clone(), &name, dir)?;
        }
        Ok(n)
    }
    let mut cmd = cmd;
    cmd.build();
    walk(cmd, "", dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(a: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("portdistrict").chain(a.iter().copied()))
    }

    #[test]
    fn dirs_anywhere_on_the_line_and_flag_equals_value() {
        let c = parse(&[
            "exit",
            "--state-dir",
            "/s",
            "list",
            "--run-dir=/r",
            "--json",
        ])
        .unwrap();
        let d = Dirs::from(c.dirs);
        assert_eq!(d.state, PathBuf::from("/s"));
        assert_eq!(d.run, PathBuf::from("/r"));
        assert!(matches!(
            c.command,
            Command::Exit(ExitCommand::List(Json { json: true }))
        ));
        // Given twice (a wrapper's default and the user's): the last wins.
        let c = parse(&["--state-dir", "/a", "exit", "--state-dir", "/b", "list"]).unwrap();
        assert_eq!(Dirs::from(c.dirs).state, PathBuf::from("/b"));
        let c = parse(&["status"]).unwrap();
        assert_eq!(
            Dirs::from(c.dirs).state,
            PathBuf::from("/var/lib/portdistrict")
        );
    }

    #[test]
    fn help_and_version_are_not_errors_and_usage_errors_exit_2() {
        for a in [
            &["--help"][..],
            &["exit", "serve", "--help"],
            &["use", "-h"],
        ] {
            let e = parse(a).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{a:?}");
            assert_eq!(e.exit_code(), 0);
        }
        let e = parse(&["--version"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        for a in [
            &["frobnicate"][..],
            &["exit", "serve"],
            &["use", "lockdown", "maybe"],
        ] {
            let e = parse(a).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{a:?}");
        }
    }

    #[test]
    fn use_takes_an_invite_or_a_subcommand() {
        let c = parse(&["use", "portdistrict-invite1:x", "--mode", "system"]).unwrap();
        let Command::Use(u) = c.command else {
            panic!("use")
        };
        assert!(u.sub.is_none());
        assert_eq!(u.args.invite.as_deref(), Some("portdistrict-invite1:x"));
        let c = parse(&["use", "status", "--json"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Use(UseCommand {
                sub: Some(UseSub::Status(Json { json: true })),
                ..
            })
        ));
        let c = parse(&["use", "lockdown", "on"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Use(UseCommand {
                sub: Some(UseSub::Lockdown {
                    what: consumer::LockdownCommand::On
                }),
                ..
            })
        ));
    }

    #[test]
    fn manpages_cover_every_visible_command() {
        let dir = std::env::temp_dir().join(format!("pd-man-{}", std::process::id()));
        let n = write_manpages(Cli::command(), &dir).unwrap();
        assert!(n > 30, "{n}");
        let page = std::fs::read_to_string(dir.join("portdistrict-exit-serve.1")).unwrap();
        assert!(page.contains("uplink"), "{page}");
        assert!(!dir.join("portdistrict-dist-files.1").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
