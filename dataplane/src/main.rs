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

const USAGE: &str = "\
Usage: portdistrict-dataplane [--foreground] [--shm PATH] [--xdp off|filter|steer] IFNAME
       portdistrict-dataplane --stats IFNAME

Creates the WireGuard interface IFNAME and serves the userspace API on
/var/run/wireguard/IFNAME.sock; configure it with wg(8) or wg-quick(8)
(WG_QUICK_USERSPACE_IMPLEMENTATION=portdistrict-dataplane).

  -f, --foreground   do not daemonize (also WG_PROCESS_FOREGROUND=1)
      --shm PATH     also take the configuration from portdistrictd's shared-memory
                     region PATH (validated first; a corrupt one is an error)
      --xdp MODE     the XDP program on the underlay's Ethernet interfaces (also
                     PD_XDP=MODE): filter (default) drops, in the kernel, UDP to the
                     listen port that is not well-formed WireGuard naming one of our
                     receiver indices and rate-limits handshake initiations per
                     source under load; steer also hands data messages to AF_XDP
                     sockets; off loads nothing. Where it cannot load or attach, the
                     log says why and the interface runs without.
      --stats        print the drop and event counters of a running IFNAME
  -h, --help         this text
      --version      the version

Environment: RUST_LOG (tracing directives) or LOG_LEVEL=error|warn|info|debug|silent;
PD_LOG_FILE=PATH keeps the
daemon's log in PATH (otherwise a daemonized process logs nowhere); PD_OFFLOAD=off
turns TUN TSO/GRO and UDP GSO/GRO off; PD_IO=poll receives through the poll(2) loop
with recvmmsg instead of io_uring (also the fallback where io_uring is unavailable);
PD_CRYPTO_THREADS=N forces N crypto threads (default: one per CPU, used while CPUs
are idle).";

enum Mode {
    Run {
        ifname: String,
        foreground: bool,
        shm: Option<std::path::PathBuf>,
        opts: Options,
    },
    Stats {
        ifname: String,
    },
    Help,
    Version,
}

/// The command line; `opts` (from the environment) is what `--xdp` overrides.
fn parse_args(args: &[String], mut opts: Options) -> anyhow::Result<Mode> {
    let mut foreground = std::env::var("WG_PROCESS_FOREGROUND").as_deref() == Ok("1");
    let mut stats = false;
    let mut ifname = None;
    let mut shm = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-f" | "--foreground" => foreground = true,
            "--shm" => {
                shm = Some(std::path::PathBuf::from(
                    it.next().context("--shm needs the region's path")?,
                ))
            }
            "--xdp" => {
                opts.xdp = portdistrict_dataplane::xdp::XdpMode::parse(
                    it.next().context("--xdp needs off, filter or steer")?,
                )
                .map_err(anyhow::Error::msg)?
            }
            "--stats" => stats = true,
            "-h" | "--help" => return Ok(Mode::Help),
            "--version" => return Ok(Mode::Version),
            s if s.starts_with('-') => anyhow::bail!("unknown option {s}\n\n{USAGE}"),
            s if ifname.is_none() => ifname = Some(s.to_string()),
            s => anyhow::bail!("unexpected argument {s}\n\n{USAGE}"),
        }
    }
    let ifname = ifname.with_context(|| format!("missing IFNAME\n\n{USAGE}"))?;
    // What wg-quick takes: 1-15 of [a-zA-Z0-9_=+.-]. Above all no `*`, which nftables
    // reads as a wildcard in a kill switch's `oifname "<tunnel>" accept`.
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'=' | b'+' | b'.' | b'-');
    if ifname.is_empty()
        || ifname.len() > 15
        || ifname == "."
        || ifname == ".."
        || !ifname.bytes().all(valid)
    {
        anyhow::bail!("invalid interface name {ifname:?}: use 1-15 letters, digits or _=+.- (no wildcards such as '*', no '/' or spaces)");
    }
    Ok(if stats {
        Mode::Stats { ifname }
    } else {
        Mode::Run {
            ifname,
            foreground,
            shm,
            opts,
        }
    })
}

fn print_stats(ifname: &str) -> anyhow::Result<()> {
    let path = uapi_server::socket_path(ifname);
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("connecting to {} (is {ifname} running?)", path.display()))?;
    s.write_all(b"stats=1\n\n")?;
    let mut text = String::new();
    s.shutdown(std::net::Shutdown::Write)?;
    s.read_to_string(&mut text)?;
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("errno="))
    {
        println!("{}", line.replacen('=', ": ", 1));
    }
    if !text.contains("errno=0") {
        anyhow::bail!("{ifname} does not answer stats (not a portdistrict-dataplane?)");
    }
    Ok(())
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
        daemonize(&keep, opts.log_file.as_deref())?;
    }
    let result = (|| {
        let signals = TermSignals::new().context("signalfd")?;
        let link = LinkMonitor::new(tun.ifindex()).context("rtnetlink link monitor")?;
        let wake = Arc::new(EventFd::new().context("eventfd")?);
        let (tx, rx) = mpsc::channel();
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
    let mode = match Options::from_env()
        .map_err(anyhow::Error::from)
        .and_then(|opts| parse_args(&args, opts))
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("portdistrict-dataplane: {e}");
            return ExitCode::from(2);
        }
    };
    match mode {
        Mode::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Mode::Version => {
            println!("portdistrict-dataplane {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Mode::Stats { ifname } => match print_stats(&ifname) {
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

    fn parse(name: &str) -> anyhow::Result<Mode> {
        parse_args(
            &["--foreground".to_owned(), name.to_owned()],
            Options::default(),
        )
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
            let e = parse(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("invalid interface name"), "{bad:?}: {e}");
        }
        for good in ["wg0", "pd-exit_0", "a=b+c.d", "a23456789012345"] {
            assert!(parse(good).is_ok(), "{good}");
        }
    }
}
