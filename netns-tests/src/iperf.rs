//! iperf3 runs between two namespaces, JSON output parsed for throughput and loss.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use crate::cmd::ChildGuard;
use crate::netns::Netns;
use portdistrict_testkit::wait_until;

/// What an iperf3 run measured (receiver side where iperf3 reports it).
#[derive(Debug, Clone, PartialEq)]
pub struct IperfReport {
    /// Throughput in bits per second.
    pub bits_per_second: f64,
    /// Payload bytes.
    pub bytes: u64,
    /// UDP only: datagrams lost, in percent.
    pub lost_percent: Option<f64>,
}

/// TCP for `secs` seconds from `client` to an iperf3 server on `dst` in `server`.
pub fn iperf3_tcp(client: &Netns, server: &Netns, dst: IpAddr, secs: u32) -> IperfReport {
    let json = run_iperf(client, server, dst, secs, &[]);
    parse_report(&json, false)
}

/// UDP for `secs` seconds at `bitrate` (iperf3 syntax, e.g. `"200M"`) with `len`-byte
/// datagrams.
pub fn iperf3_udp(
    client: &Netns,
    server: &Netns,
    dst: IpAddr,
    secs: u32,
    len: u32,
    bitrate: &str,
) -> IperfReport {
    let len = len.to_string();
    let json = run_iperf(
        client,
        server,
        dst,
        secs,
        &["-u", "-l", &len, "-b", bitrate],
    );
    parse_report(&json, true)
}

const PORT: &str = "5201";

fn run_iperf(client: &Netns, server: &Netns, dst: IpAddr, secs: u32, extra: &[&str]) -> String {
    let dst_s = dst.to_string();
    let mut srv = ChildGuard::spawn(
        "iperf3 server",
        server
            .command(&["iperf3", "-s", "-1", "-B", &dst_s, "-p", PORT])
            .stdout(Stdio::null()),
    );
    let listening = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        !server
            .exec(&["ss", "-Hltn", &format!("sport = :{PORT}")])
            .trim()
            .is_empty()
    });
    assert!(
        listening,
        "iperf3 server did not listen on {dst} in {}",
        server.name()
    );
    let secs_s = secs.to_string();
    let mut argv = vec!["iperf3", "-c", &dst_s, "-p", PORT, "-t", &secs_s, "-J"];
    argv.extend_from_slice(extra);
    let mut cli = ChildGuard::spawn(
        "iperf3 client",
        client.command(&argv).stdout(Stdio::piped()),
    );
    let stdout = cli.child_mut().stdout.take().expect("piped");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout));
    cli.expect_success_within(Duration::from_secs(u64::from(secs) + 20));
    srv.wait_timeout(Duration::from_secs(5));
    reader
        .join()
        .expect("reader thread panicked")
        .unwrap_or_else(|e| panic!("reading iperf3 output failed: {e}"))
}

/// Extracts throughput (and loss for UDP) from iperf3 `-J` output of the client.
fn parse_report(json: &str, udp: bool) -> IperfReport {
    let v: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("iperf3 output is not JSON ({e}):\n{json}"));
    if let Some(err) = v.get("error") {
        panic!("iperf3 reported an error: {err}");
    }
    let sum = if udp {
        &v["end"]["sum"]
    } else {
        &v["end"]["sum_received"]
    };
    let number = |key: &str| {
        sum[key]
            .as_f64()
            .unwrap_or_else(|| panic!("iperf3 JSON lacks end.{key}:\n{json}"))
    };
    IperfReport {
        bits_per_second: number("bits_per_second"),
        bytes: number("bytes") as u64,
        lost_percent: udp.then(|| number("lost_percent")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_udp() {
        let tcp = r#"{"end":{"sum_sent":{"bits_per_second":2e9,"bytes":10},
                     "sum_received":{"bits_per_second":1.5e9,"bytes":750000000}}}"#;
        let r = parse_report(tcp, false);
        assert_eq!(r.bits_per_second, 1.5e9);
        assert_eq!(r.bytes, 750_000_000);
        assert_eq!(r.lost_percent, None);
        let udp = r#"{"end":{"sum":{"bits_per_second":1e8,"bytes":1000,"lost_percent":0.5}}}"#;
        assert_eq!(parse_report(udp, true).lost_percent, Some(0.5));
    }

    #[test]
    #[should_panic(expected = "iperf3 reported an error")]
    fn surfaces_iperf_errors() {
        parse_report(r#"{"start":{},"error":"unable to connect"}"#, false);
    }
}
