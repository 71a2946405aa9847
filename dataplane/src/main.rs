//! `portdistrict-dataplane [--foreground] IFNAME` — a userspace WireGuard interface,
//! with the same process contract as wireguard-go: it creates TUN IFNAME, serves
//! `/var/run/wireguard/IFNAME.sock`, daemonizes unless `--foreground` or
//! `WG_PROCESS_FOREGROUND=1`, and exits when IFNAME is deleted or on SIGTERM/SIGINT.
//!
//! `portdistrict-dataplane --stats IFNAME` prints a running interface's drop counters.

use anyhow::Context as _;
use portdistrict_dataplane::driver::{Driver, Exit, Options};
use portdistrict_dataplane::io::{EventFd, LinkMonitor, Tun};
use portdistrict_dataplane::signals::TermSignals;
use portdistrict_dataplane::uapi_server;
use portdistrict_wg::device::Device;
use std::io::{Read as _, Write as _};
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What `--help` shows after the options.
const AFTER_HELP: &str = "\
Creates the WireGuard interface IFNAME and serves the userspace API on \
/var/run/wireguard/IFNAME.sock; configure it with wg(8) or wg-quick(8) \
(WG_QUICK_USERSPACE_IMPLEMENTATION=portdistrict-dataplane). It exits when IFNAME is \
deleted, or on SIGTERM or SIGINT.

Environment: RUST_LOG (tracing directives) or LOG_LEVEL=error|warn|info|debug|silent; \
PD_LOG_FILE=PATH keeps the daemon's log in PATH (otherwise a daemonized process logs \
nowhere); PD_OFFLOAD=off turns TUN TSO/GRO and UDP GSO/GRO off; PD_IO=poll receives \
through the poll(2) loop with recvmmsg instead of io_uring (also the fallback where \
io_uring is unavailable); PD_CRYPTO_THREADS=N forces N crypto threads (default: one \
per CPU, used while CPUs are idle); PD_XDP=MODE as --xdp; PD_METRICS_LISTEN=ADDR:PORT \
as --metrics-listen.

Exit status: 0 when the interface went away or on a signal, 1 on failure, 2 for a \
usage error.";

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "portdistrict-dataplane",
    version,
    about = "A userspace WireGuard interface (the process contract of wireguard-go), \
             over io_uring with offloads and an XDP filter.",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Do not daemonize (also WG_PROCESS_FOREGROUND=1)
    #[arg(short, long)]
    foreground: bool,
    /// Also take the configuration from portdistrictd's shared-memory region PATH
    /// (validated first; a corrupt one is an error)
    #[arg(long, value_name = "PATH")]
    shm: Option<std::path::PathBuf>,
    /// The XDP program on the underlay's Ethernet interfaces: filter (default) drops,
    /// in the kernel, UDP to the listen port that is not well-formed WireGuard naming
    /// one of our receiver indices and rate-limits handshake initiations per source
    /// under load; steer also hands data messages to AF_XDP sockets; off loads
    /// nothing. Where it cannot load or attach, the log says why and the interface
    /// runs without
    #[arg(long, value_name = "off|filter|steer",
          value_parser = |s: &str| portdistrict_dataplane::xdp::XdpMode::parse(s))]
    xdp: Option<portdistrict_dataplane::xdp::XdpMode>,
    /// Serve Prometheus metrics (every --stats counter, each peer's bytes and
    /// handshake age) on http://ADDR:PORT/metrics, e.g. 127.0.0.1:9586; off by
    /// default. They name peers' public keys and traffic volumes: keep the address
    /// private (also PD_METRICS_LISTEN)
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Print the drop and event counters of a running IFNAME
    #[arg(long)]
    stats: bool,
    /// Check what this machine offers the dataplane (io_uring, TUN and UDP offloads,
    /// XDP, AVX-512 crypto) by trying each; changes nothing
    #[arg(long, conflicts_with_all = ["stats", "foreground", "shm", "xdp"])]
    check: bool,
    /// With --stats or --check: JSON
    #[arg(long)]
    json: bool,
    /// Write this binary's man page and shell completions into DIR (packaging)
    #[arg(long, value_name = "DIR", hide = true, exclusive = true)]
    dist_files: Option<std::path::PathBuf>,
    /// The interface
    #[arg(value_name = "IFNAME", required_unless_present_any = ["dist_files", "check"],
          value_parser = check_ifname)]
    ifname: Option<String>,
}

enum Mode {
    Run {
        ifname: String,
        foreground: bool,
        shm: Option<std::path::PathBuf>,
        opts: Options,
    },
    Stats {
        ifname: String,
        json: bool,
    },
    DistFiles(std::path::PathBuf),
    /// `--check [--json]`.
    Check {
        json: bool,
    },
}

/// What wg-quick takes: 1-15 of [a-zA-Z0-9_=+.-]. Above all no `*`, which nftables
/// reads as a wildcard in a kill switch's `oifname "<tunnel>" accept`.
fn check_ifname(ifname: &str) -> Result<String, String> {
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'=' | b'+' | b'.' | b'-');
    if ifname.is_empty()
        || ifname.len() > 15
        || ifname == "."
        || ifname == ".."
        || !ifname.bytes().all(valid)
    {
        return Err(format!("invalid interface name {ifname:?}: use 1-15 letters, digits or _=+.- (no wildcards such as '*', no '/' or spaces)"));
    }
    Ok(ifname.to_owned())
}

/// The command line `args` (without the program's name); `opts` (from the
/// environment) is what `--xdp` overrides.
fn parse_args(args: &[String], mut opts: Options) -> Result<Mode, clap::Error> {
    use clap::Parser as _;
    let cli = Cli::try_parse_from(
        std::iter::once("portdistrict-dataplane").chain(args.iter().map(String::as_str)),
    )?;
    if let Some(dir) = cli.dist_files {
        return Ok(Mode::DistFiles(dir));
    }
    if cli.check {
        return Ok(Mode::Check { json: cli.json });
    }
    if cli.json && !cli.stats {
        use clap::CommandFactory as _;
        return Err(Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            "--json goes with --stats or --check",
        ));
    }
    let ifname = cli.ifname.unwrap_or_default();
    if let Some(x) = cli.xdp {
        opts.xdp = x;
    }
    if let Some(a) = cli.metrics_listen {
        opts.metrics_listen = Some(a);
    }
    let foreground = cli.foreground || std::env::var("WG_PROCESS_FOREGROUND").as_deref() == Ok("1");
    Ok(if cli.stats {
        Mode::Stats {
            ifname,
            json: cli.json,
        }
    } else {
        Mode::Run {
            ifname,
            foreground,
            shm: cli.shm,
            opts,
        }
    })
}

/// The man page and completions (bash, zsh, fish) into `dir`.
fn dist_files(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    std::fs::write(dir.join("portdistrict-dataplane.1"), page)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut Cli::command(), "portdistrict-dataplane", dir)?;
    }
    Ok(())
}

/// `--stats [--json]`: the counters a running interface reports.
fn print_stats(ifname: &str, json: bool) -> anyhow::Result<()> {
    let path = uapi_server::socket_path(ifname);
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("connecting to {} (is {ifname} running?)", path.display()))?;
    s.write_all(b"stats=1\n\n")?;
    let mut text = String::new();
    s.shutdown(std::net::Shutdown::Write)?;
    s.read_to_string(&mut text)?;
    if !text.contains("errno=0") {
        anyhow::bail!("{ifname} does not answer stats (not a portdistrict-dataplane?)");
    }
    let out = if json {
        stats_json(&text)
    } else {
        let mut out = String::new();
        for (k, v) in stats_lines(&text) {
            out.push_str(&format!("{k}: {v}\n"));
        }
        out
    };
    let mut o = std::io::stdout().lock();
    match o.write_all(out.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to standard output"),
    }
}

/// The `key=value` lines of a stats answer, without `errno`.
fn stats_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && *k != "errno")
}

/// The stats as one JSON object: numbers as numbers, anything else as a string.
fn stats_json(text: &str) -> String {
    let mut m = serde_json::Map::new();
    for (k, v) in stats_lines(text) {
        let value = v
            .parse::<u64>()
            .map(serde_json::Value::from)
            .unwrap_or_else(|_| serde_json::Value::from(v));
        m.insert(k.to_owned(), value);
    }
    let mut s = serde_json::Value::Object(m).to_string();
    s.push('\n');
    s
}

/// Forks; the parent exits at once (the interface and the socket already exist, so
/// whoever launched us can use and move the interface immediately), the child
/// detaches from the terminal and carries on.
/// Inherited descriptors other than stdio and `keep` are closed, so that a launcher
/// waiting for EOF on a pipe it passed down (`out=$(portdistrict-dataplane wg0)`)
/// is not held open by the daemon.
/// The daemon's stdout and stderr go to `log` (`PD_LOG_FILE`), else nowhere.
fn daemonize(keep: &[std::os::fd::RawFd], log: Option<&std::path::Path>) -> anyhow::Result<()> {
    // SAFETY: no other thread exists yet (threads are started after this), so the
    // child is a complete copy of this single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid > 0 {
        // SAFETY: _exit skips atexit handlers and stdio flushing that belong to the child now.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: plain syscalls on our own process.
    unsafe { libc::setsid() };
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let out = match log {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)?,
        None => null.try_clone()?,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto the standard descriptors of our own process.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(out.as_raw_fd(), 1);
        libc::dup2(out.as_raw_fd(), 2);
    }
    drop((null, out));
    close_inherited(keep);
    let _ = std::env::set_current_dir("/");
    Ok(())
}

/// Closes every open descriptor above 2 that is not in `keep`.
fn close_inherited(keep: &[std::os::fd::RawFd]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let open: Vec<std::os::fd::RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open.into_iter().filter(|fd| *fd > 2 && !keep.contains(fd)) {
        // SAFETY: `fd` is not owned by any Rust object of this process (the ones we
        // keep are in `keep`; the directory handle is already closed, so its number
        // fails with EBADF at worst).
        unsafe { libc::close(fd) };
    }
}

fn run(
    ifname: &str,
    foreground: bool,
    shm: Option<&std::path::Path>,
    opts: &Options,
) -> anyhow::Result<Exit> {
    // A region that is not valid is an error before anything is created.
    let region = shm
        .map(|p| {
            portdistrict_shm::Region::open(p)
                .with_context(|| format!("shared-memory region {}", p.display()))
        })
        .transpose()?;
    // Bound before anything is created or the process detaches: an address in use
    // fails the start, visibly.
    let metrics = opts
        .metrics_listen
        .map(|a| {
            portdistrict_metrics::http::bind(a)
                .with_context(|| format!("binding the metrics endpoint {a}"))
        })
        .transpose()?;
    let tun = if opts.udp_offload {
        Tun::create_offloaded(ifname)
    } else {
        Tun::create(ifname)
    }
    .with_context(|| format!("creating TUN interface {ifname}"))?;
    let name = tun.name().to_string();
    if let Err(e) = tun.set_mtu(1420) {
        tracing::warn!("{name}: setting the default MTU 1420: {e}");
    }
    let listener = uapi_server::bind(&name)?;
    let mtu = tun.mtu().unwrap_or(1420) as usize;
    if !foreground {
        use std::os::fd::{AsFd as _, AsRawFd};
        // The region's file stays open: its size is checked before every access.
        let region_fd = region.as_ref().map(|r| r.as_fd().as_raw_fd());
        let mut keep = vec![tun.as_raw_fd(), listener.as_raw_fd()];
        keep.extend(region_fd);
        keep.extend(metrics.as_ref().map(AsRawFd::as_raw_fd));
        daemonize(&keep, opts.log_file.as_deref())?;
    }
    let result = (|| {
        let signals = TermSignals::new().context("signalfd")?;
        let link = LinkMonitor::new(tun.ifindex()).context("rtnetlink link monitor")?;
        let wake = Arc::new(EventFd::new().context("eventfd")?);
        let (tx, rx) = mpsc::channel();
        if let Some(m) = metrics {
            let addr = m.local_addr()?;
            let scrape =
                portdistrict_dataplane::uapi_server::metrics_scraper(tx.clone(), wake.clone());
            portdistrict_metrics::http::spawn(m, scrape).context("starting the metrics thread")?;
            tracing::info!("{name}: metrics on http://{addr}/metrics");
        }
        uapi_server::spawn(listener, tx, wake.clone()).context("starting the UAPI thread")?;
        let mut seed = [0u8; 32];
        getrandom(&mut seed)?;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let device = Device::new(seed, (Instant::now(), wall), mtu);
        tracing::info!("{name}: started (MTU {mtu})");
        let mut driver = Driver::new(device, tun, link, signals, wake, rx, opts)?;
        if let Some(r) = region {
            driver = driver.with_shm(r);
        }
        // The interface exists and the UAPI socket listens (its thread answers).
        portdistrict_logging::notify::ready(&format!("serving {name} (MTU {mtu})"));
        let exit = driver.run();
        portdistrict_logging::notify::stopping();
        exit
    })();
    let _ = std::fs::remove_file(uapi_server::socket_path(&name));
    result
}

fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use rand_core::RngCore as _;
    rand_core::OsRng
        .try_fill_bytes(buf)
        .map_err(|e| anyhow::anyhow!("reading the OS random number generator: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match Options::from_env() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("portdistrict-dataplane: {e}");
            return ExitCode::from(2);
        }
    };
    // Usage errors exit 2 here; --help and --version exit 0.
    let mode = parse_args(&args, opts).unwrap_or_else(|e| e.exit());
    match mode {
        Mode::DistFiles(dir) => match dist_files(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portdistrict-dataplane: {e:#}");
                ExitCode::FAILURE
            }
        },
        Mode::Check { json } => {
            let found = portdistrict_dataplane::check::run();
            if json {
                println!("{}", portdistrict_dataplane::check::json(&found));
            } else {
                print!("{}", portdistrict_dataplane::check::text(&found));
            }
            ExitCode::SUCCESS
        }
        Mode::Stats { ifname, json } => match print_stats(&ifname, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portdistrict-dataplane: {e:#}");
                ExitCode::FAILURE
            }
        },
        Mode::Run {
            ifname,
            foreground,
            shm,
            opts,
        } => {
            portdistrict_logging::init(
                &format!("portdistrict-dataplane({ifname})"),
                tracing::Level::INFO,
            );
            match run(&ifname, foreground, shm.as_deref(), &opts) {
                Ok(exit) => {
                    tracing::info!("{ifname}: shutting down ({exit:?})");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("portdistrict-dataplane: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod interface_name_tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Mode, clap::Error> {
        let a: Vec<String> = a.iter().map(|s| (*s).to_owned()).collect();
        parse_args(&a, Options::default())
    }

    #[test]
    fn wildcards_and_odd_names_are_refused() {
        for bad in [
            "*",
            "x*",
            "wg?",
            "a b",
            "a/b",
            "",
            ".",
            "..",
            "a234567890123456",
            "a:1",
            "a\"b",
        ] {
            let e = parse(&["--foreground", bad])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("invalid interface name"), "{bad:?}: {e}");
        }
        for good in ["wg0", "pd-exit_0", "a=b+c.d", "a23456789012345"] {
            assert!(parse(&["--foreground", good]).is_ok(), "{good}");
        }
    }

    #[test]
    fn the_command_line() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        assert!(matches!(
            parse(&["--stats", "--json", "wg0"]),
            Ok(Mode::Stats { json: true, .. })
        ));
        assert!(matches!(
            parse(&["-f", "--xdp=off", "wg0"]),
            Ok(Mode::Run { foreground: true, opts, .. }) if opts.xdp == portdistrict_dataplane::xdp::XdpMode::Off
        ));
        assert!(matches!(
            parse(&["--metrics-listen", "127.0.0.1:9586", "wg0"]),
            Ok(Mode::Run { opts, .. }) if opts.metrics_listen == Some("127.0.0.1:9586".parse().unwrap())
        ));
        for (bad, code) in [
            (&["--json", "wg0"][..], 2),
            (&[][..], 2),
            (&["--bogus", "wg0"][..], 2),
            (&["--xdp", "x", "wg0"][..], 2),
            (&["--metrics-listen", "localhost", "wg0"][..], 2),
        ] {
            let e = parse(bad).err().unwrap();
            assert_eq!(e.exit_code(), code, "{bad:?}");
        }
        assert_eq!(parse(&["--help"]).err().unwrap().exit_code(), 0);
        assert_eq!(parse(&["--version"]).err().unwrap().exit_code(), 0);
    }

    #[test]
    fn stats_as_json_keep_numbers_numbers() {
        let v: serde_json::Value =
            serde_json::from_str(&stats_json("rx_bad_mac=3\nio_backend=uring\nerrno=0\n")).unwrap();
        assert_eq!(v["rx_bad_mac"], 3);
        assert_eq!(v["io_backend"], "uring");
        assert!(v.get("errno").is_none());
    }
}
