//! The second part of `cargo xtask demo`: an exit node. Three namespaces: a
//! consumer and a provider, each with an uplink into an "internet" namespace that
//! routes between them and runs a TCP service answering with the address it sees.
//! The provider runs `portdistrict exit serve` and hands out an invite; the consumer
//! runs `portdistrict use INVITE --mode system`, and the service sees the provider's
//! address instead of the consumer's. Then the consumer's dataplane is killed: the
//! kill switch keeps everything blocked until `use` brings the tunnel back; `use off`
//! restores the consumer. Everything is owned by a guard, so nothing is left behind.

use crate::guards::{Background, Netns, TempDir};
use crate::proc::{capture, cmd, output, POLL};
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_secs(30);
const SERVICE: &str = "198.51.100.1";
const CONSUMER_UPLINK: [&str; 2] = ["10.78.1.1", "10.78.1.2"];
const PROVIDER_UPLINK: [&str; 2] = ["10.78.2.1", "10.78.2.2"];

/// Answers every TCP connection on port 7000 with the address it came from.
const WHO: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000))
s.listen(16)
while True:
    c, a = s.accept()
    c.sendall(a[0].encode())
    c.close()
"#;

/// Prints what the service at argv[1]:7000 says, or `no answer (...)`.
const ASK: &str = r#"
import socket, sys
try:
    print(socket.create_connection((sys.argv[1], 7000), timeout=2).recv(64).decode())
except OSError as e:
    print("no answer (%s)" % e)
"#;

/// The namespaces and names of this run.
struct Names {
    consumer: String,
    provider: String,
    internet: String,
    veth: [String; 4],
    tunnel: [String; 2],
}

impl Names {
    fn new(pid: u32) -> Names {
        let n = pid % 1000;
        Names {
            consumer: format!("pd-demo-{pid}-consumer"),
            provider: format!("pd-demo-{pid}-provider"),
            internet: format!("pd-demo-{pid}-internet"),
            veth: [
                format!("pdv{n}c"),
                format!("pdv{n}ci"),
                format!("pdv{n}p"),
                format!("pdv{n}pi"),
            ],
            tunnel: [format!("pdu{n}"), format!("pdx{n}")],
        }
    }
}

/// The `portdistrict` CLI with its own state and run directories, in a namespace.
struct Cli<'a> {
    ns: &'a Netns,
    bin: PathBuf,
    dataplane: PathBuf,
    state: PathBuf,
    run: PathBuf,
}

impl Cli<'_> {
    fn command(&self, args: &[&str]) -> std::process::Command {
        let bin = self.bin.to_string_lossy();
        let (st, rd) = (self.state.to_string_lossy(), self.run.to_string_lossy());
        let mut argv = vec![&*bin, "--state-dir", &*st, "--run-dir", &*rd];
        argv.extend_from_slice(args);
        let mut c = self.ns.exec(&argv);
        c.env("PD_DATAPLANE", &self.dataplane);
        c
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        output(&mut self.command(args), SHORT)
    }
}

/// `use off` when the demo ends, however it ends (before the namespaces go).
struct UseOff<'a>(&'a Cli<'a>);

impl Drop for UseOff<'_> {
    fn drop(&mut self) {
        let _ = capture(&mut self.0.command(&["use", "off"]), SHORT);
    }
}

fn link(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    let mut add = cmd(&[
        "ip",
        "link",
        "add",
        a_name,
        "netns",
        a.name(),
        "type",
        "veth",
    ]);
    add.args(["peer", "name", b_name, "netns", b.name()]);
    output(&mut add, SHORT)?;
    Ok(())
}

fn addr(ns: &Netns, cidr: &str, dev: &str) -> Result<()> {
    ns.ip(&["addr", "add", cidr, "dev", dev])?;
    ns.ip(&["link", "set", dev, "up"])?;
    Ok(())
}

fn ask(ns: &Netns) -> Result<String> {
    Ok(
        output(&mut ns.exec(&["python3", "-c", ASK, SERVICE]), SHORT)?
            .trim()
            .to_owned(),
    )
}

/// Runs the exit-node part of the demo with the release binaries in `bin_dir`.
pub(crate) fn run(bin_dir: &Path) -> Result<()> {
    let pid = std::process::id();
    let names = Names::new(pid);
    let tmp = TempDir::new(&format!("pd-demo-exit-{pid}"))?;
    let internet = Netns::new(&names.internet)?;
    let consumer = Netns::new(&names.consumer)?;
    let provider = Netns::new(&names.provider)?;
    let v = &names.veth;
    link(&consumer, &v[0], &internet, &v[1])?;
    link(&provider, &v[2], &internet, &v[3])?;
    addr(&consumer, &format!("{}/24", CONSUMER_UPLINK[0]), &v[0])?;
    addr(&internet, &format!("{}/24", CONSUMER_UPLINK[1]), &v[1])?;
    addr(&provider, &format!("{}/24", PROVIDER_UPLINK[0]), &v[2])?;
    addr(&internet, &format!("{}/24", PROVIDER_UPLINK[1]), &v[3])?;
    internet.ip(&["addr", "add", &format!("{SERVICE}/32"), "dev", "lo"])?;
    output(
        &mut internet.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]),
        SHORT,
    )?;
    consumer.ip(&["route", "add", "default", "via", CONSUMER_UPLINK[1]])?;
    provider.ip(&["route", "add", "default", "via", PROVIDER_UPLINK[1]])?;
    let _service = Background::start(&mut internet.exec(&["python3", "-c", WHO]))?;
    println!(
        "\ndemo (exit node): {} ({}) and {} ({}) reach the internet {} through {}",
        names.consumer,
        CONSUMER_UPLINK[0],
        names.provider,
        PROVIDER_UPLINK[0],
        SERVICE,
        names.internet
    );
    let dataplane = bin_dir.join("portdistrict-dataplane");
    let cli = |ns, role: &str| Cli {
        ns,
        bin: bin_dir.join("portdistrict"),
        dataplane: dataplane.clone(),
        state: tmp.path().join(format!("{role}-state")),
        run: tmp.path().join(format!("{role}-run")),
    };
    let p = cli(&provider, "provider");
    let c = cli(&consumer, "consumer");
    wait_for_service(&consumer)?;
    println!("the service sees the consumer as: {}", ask(&consumer)?);

    let endpoint = format!("{}:51820", PROVIDER_UPLINK[0]);
    let mut serve = Background::start(&mut p.command(&[
        "exit",
        "serve",
        "--uplink",
        &v[2],
        "--interface",
        &names.tunnel[1],
        "--endpoint",
        &endpoint,
        "--dns-upstream",
        SERVICE,
    ]))?;
    wait_serving(&provider, &mut serve)?;
    println!(
        "$ portdistrict exit serve --uplink {} --endpoint {endpoint}   (running)",
        v[2]
    );
    let invite = p.run(&["exit", "invite", "--expires", "1h"])?;
    let invite = invite.trim();
    println!("$ portdistrict exit invite --expires 1h\n{invite}");

    let use_args = [
        "use",
        invite,
        "--mode",
        "system",
        "--interface",
        &names.tunnel[0],
        // The namespace shares /etc with the host: leave the host's resolver alone.
        "--resolv-conf",
        "none",
    ];
    let _off = UseOff(&c);
    println!("$ portdistrict use portdistrict-invite1:... --mode system");
    print!("{}", c.run(&use_args)?);
    println!("$ portdistrict use status");
    print!("{}", c.run(&["use", "status"])?);
    let seen = ask(&consumer)?;
    println!("the service now sees the consumer as: {seen}");
    if seen != PROVIDER_UPLINK[0] {
        bail!(
            "expected the provider's address {}, the service saw {seen}",
            PROVIDER_UPLINK[0]
        );
    }

    // The kill switch: the dataplane dies, nothing gets out.
    let killed = output(
        &mut consumer.exec(&[
            "pkill",
            "-KILL",
            "-f",
            &format!("portdistrict-dataplane {}$", names.tunnel[0]),
        ]),
        SHORT,
    );
    killed.context("killing the consumer's dataplane")?;
    std::thread::sleep(Duration::from_millis(500));
    let blocked = ask(&consumer)?;
    println!("after SIGKILL of the consumer's dataplane: {blocked}   (the kill switch holds)");
    if !blocked.starts_with("no answer") {
        bail!("traffic got out with the tunnel down: {blocked}");
    }
    println!("$ portdistrict use ...   (again: brings the tunnel back)");
    print!("{}", c.run(&use_args)?);
    println!("the service sees: {}", ask(&consumer)?);
    println!("$ portdistrict use off");
    print!("{}", c.run(&["use", "off"])?);
    println!("the service sees the consumer as: {}", ask(&consumer)?);
    Ok(())
}

/// Waits until the service answers the consumer directly (at most 10 s).
fn wait_for_service(consumer: &Netns) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask(consumer)?.starts_with("no answer") {
        if Instant::now() >= deadline {
            bail!("the demo's service in the internet namespace does not answer");
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Waits until `exit serve` has its firewall table up (at most 20 s).
fn wait_serving(provider: &Netns, serve: &mut Background) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        crate::proc::check_interrupt()?;
        let c = capture(
            &mut provider.exec(&["nft", "list", "table", "inet", "portdistrict_exit"]),
            SHORT,
        )?;
        if c.status.success() {
            return Ok(());
        }
        if !serve.running() {
            bail!("portdistrict exit serve exited before it was up");
        }
        if Instant::now() >= deadline {
            bail!("portdistrict exit serve is not up after 20 s");
        }
        std::thread::sleep(POLL);
    }
}
