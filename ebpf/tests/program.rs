//! The XDP program run on crafted frames through `BPF_PROG_TEST_RUN` (needs root,
//! as the whole suite does in CI): every verdict, and the counter it moves; in the
//! framing test every frame also goes through the tc program, which must agree.

use portdistrict_ebpf::{Counter, XdpError, XdpProgram};

const DROP: u32 = 1;
const PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const PORT: u16 = 51820;

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root");
    }
    euid == 0
}

fn program() -> XdpProgram {
    let mut p = XdpProgram::load().expect("load the XDP program");
    p.set_ports(&[PORT, 51821]).unwrap();
    p
}

fn checksum_free_udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&src_port.to_be_bytes());
    u.extend_from_slice(&dst_port.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// Ethernet + IPv4 (`frag` as the flags/fragment-offset field) + `l4` with `proto`.
fn ipv4_frame(src: [u8; 4], proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(0x0800);
    let total = (20 + l4.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1]);
    f.extend_from_slice(&frag.to_be_bytes());
    f.extend_from_slice(&[64, proto, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[10, 0, 0, 2]);
    f.extend_from_slice(l4);
    f
}

fn udp4(src: [u8; 4], dst_port: u16, payload: &[u8]) -> Vec<u8> {
    ipv4_frame(src, 17, 0, &checksum_free_udp(40000, dst_port, payload))
}

/// Ethernet + IPv6, optionally with a hop-by-hop options header, + UDP.
fn udp6(dst_port: u16, hop_by_hop: bool, payload: &[u8]) -> Vec<u8> {
    udp6_from([0xfd; 16], dst_port, hop_by_hop, payload)
}

/// [`udp6`] from the source address `src`.
fn udp6_from(src: [u8; 16], dst_port: u16, hop_by_hop: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = eth(0x86dd);
    let udp = checksum_free_udp(40000, dst_port, payload);
    let ext: &[u8] = if hop_by_hop {
        &[17, 0, 1, 4, 0, 0, 0, 0]
    } else {
        &[]
    };
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((ext.len() + udp.len()) as u16).to_be_bytes());
    f.push(if hop_by_hop { 0 } else { 17 });
    f.push(64);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0xfe; 16]);
    f.extend_from_slice(ext);
    f.extend_from_slice(&udp);
    f
}

/// Ethernet + IPv6 + a fragment header (`offset` in 8-byte units, more fragments
/// follow) + `l4` (the start of a UDP datagram for the first fragment).
fn frag6(offset: u16, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((8 + l4.len()) as u16).to_be_bytes());
    f.push(44);
    f.push(64);
    f.extend_from_slice(&[0xfd; 16]);
    f.extend_from_slice(&[0xfe; 16]);
    f.extend_from_slice(&[17, 0]);
    f.extend_from_slice(&((offset << 3) | 1).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 7]);
    f.extend_from_slice(l4);
    f
}

/// A WireGuard-shaped message: type, zero reserved bytes, `index` at `at`, `len` bytes.
fn wg(kind: u8, len: usize, index_at: usize, index: u32) -> Vec<u8> {
    let mut m = vec![0xaa; len];
    m[0] = kind;
    m[1..4].fill(0);
    if len >= index_at + 4 {
        m[index_at..index_at + 4].copy_from_slice(&index.to_le_bytes());
    }
    m
}

struct Run {
    p: XdpProgram,
    before: [u64; 11],
    /// Also run every frame through the tc program and expect the same decision.
    tc: bool,
}

impl Run {
    fn new(p: XdpProgram) -> Self {
        let before = p.counters().unwrap();
        Run {
            p,
            before,
            tc: false,
        }
    }

    /// Runs `frame`, asserts the verdict and that exactly `counter` moved by one;
    /// with `tc`, the same through the tc program (which never redirects).
    fn expect(&mut self, what: &str, frame: &[u8], verdict: u32, counter: Option<Counter>) {
        let got = self.p.test_run(frame).unwrap();
        assert_eq!(got, verdict, "{what}: verdict");
        self.check_counter(what, counter);
        // The kernel builds a test skb only from a whole Ethernet header, and refuses
        // (EINVAL) one whose IP header is cut short: such frames go through XDP only.
        if self.tc && frame.len() >= 14 {
            let got = match self.p.test_run_tc(frame) {
                Ok(v) => v,
                Err(XdpError::TestRun(e))
                    if e.raw_os_error() == Some(libc::EINVAL) && frame.len() < 14 + 40 =>
                {
                    return;
                }
                Err(e) => panic!("{what}: tc test run of {} bytes: {e}", frame.len()),
            };
            let want = if verdict == DROP {
                TC_ACT_SHOT
            } else {
                TC_ACT_OK
            };
            assert_eq!(got, want, "{what}: tc verdict");
            self.check_counter(&format!("{what} (tc)"), counter);
        }
    }

    fn check_counter(&mut self, what: &str, counter: Option<Counter>) {
        let after = self.p.counters().unwrap();
        for (i, c) in Counter::ALL.iter().enumerate() {
            let want = u64::from(Some(*c) == counter);
            assert_eq!(
                after[i] - self.before[i],
                want,
                "{what}: counter {}",
                c.name()
            );
        }
        self.before = after;
    }
}

const KNOWN: u32 = 0x1234_5678;
const UNKNOWN: u32 = 0x8765_4321;
const SRC: [u8; 4] = [192, 0, 2, 7];

#[test]
fn framing_filter_passes_only_wireguard_naming_held_indices() {
    if !root() {
        return;
    }
    let mut p = program();
    p.add_receiver(KNOWN).unwrap();
    let mut r = Run::new(p);
    r.tc = true;
    // Not ours: untouched, uncounted.
    r.expect("other port", &udp4(SRC, 53, b"junk"), PASS, None);
    r.expect("TCP", &ipv4_frame(SRC, 6, 0, &[0u8; 40]), PASS, None);
    r.expect("ARP", &[eth(0x0806), vec![0; 28]].concat(), PASS, None);
    r.expect("IPv4 ethertype, no header", &eth(0x0800), PASS, None);
    // Each message type at its size, both ports.
    r.expect(
        "initiation",
        &udp4(SRC, PORT, &wg(1, 148, 4, 9)),
        PASS,
        Some(Counter::PassInitiation),
    );
    r.expect(
        "initiation, 2nd port",
        &udp4(SRC, 51821, &wg(1, 148, 4, 9)),
        PASS,
        Some(Counter::PassInitiation),
    );
    r.expect(
        "response",
        &udp4(SRC, PORT, &wg(2, 92, 8, KNOWN)),
        PASS,
        Some(Counter::PassResponse),
    );
    r.expect(
        "cookie",
        &udp4(SRC, PORT, &wg(3, 64, 4, KNOWN)),
        PASS,
        Some(Counter::PassCookie),
    );
    r.expect(
        "keepalive",
        &udp4(SRC, PORT, &wg(4, 32, 4, KNOWN)),
        PASS,
        Some(Counter::PassData),
    );
    r.expect(
        "data 16",
        &udp4(SRC, PORT, &wg(4, 48, 4, KNOWN)),
        PASS,
        Some(Counter::PassData),
    );
    r.expect(
        "data at MTU 1420",
        &udp4(SRC, PORT, &wg(4, 32 + 1420, 4, KNOWN)),
        PASS,
        Some(Counter::PassData),
    );
    r.expect(
        "data at MTU 68",
        &udp4(SRC, PORT, &wg(4, 32 + 68, 4, KNOWN)),
        PASS,
        Some(Counter::PassData),
    );
    // Wrong lengths.
    for len in [147, 149, 92, 0x94 + 16] {
        r.expect(
            "initiation length",
            &udp4(SRC, PORT, &wg(1, len, 4, 9)),
            DROP,
            Some(Counter::DropBadLength),
        );
    }
    r.expect(
        "response 91",
        &udp4(SRC, PORT, &wg(2, 91, 8, KNOWN)),
        DROP,
        Some(Counter::DropBadLength),
    );
    r.expect(
        "response 148",
        &udp4(SRC, PORT, &wg(2, 148, 8, KNOWN)),
        DROP,
        Some(Counter::DropBadLength),
    );
    r.expect(
        "cookie 65",
        &udp4(SRC, PORT, &wg(3, 65, 4, KNOWN)),
        DROP,
        Some(Counter::DropBadLength),
    );
    r.expect(
        "data 31",
        &udp4(SRC, PORT, &wg(4, 31, 4, KNOWN)),
        DROP,
        Some(Counter::DropBadLength),
    );
    for plain in [1, 5, 15, 17, 19] {
        r.expect(
            "data, plaintext shorter than an IP header",
            &udp4(SRC, PORT, &wg(4, 32 + plain, 4, KNOWN)),
            DROP,
            Some(Counter::DropBadLength),
        );
    }
    r.expect(
        "unpadded 20",
        &udp4(SRC, PORT, &wg(4, 32 + 20, 4, KNOWN)),
        PASS,
        Some(Counter::PassData),
    );
    r.expect(
        "unpadded 67",
        &udp4(SRC, PORT, &wg(4, 32 + 67, 4, KNOWN)),
        PASS,
        Some(Counter::PassData),
    );
    // Receivers the dataplane does not hold.
    r.expect(
        "response, unknown",
        &udp4(SRC, PORT, &wg(2, 92, 8, UNKNOWN)),
        DROP,
        Some(Counter::DropUnknownReceiver),
    );
    r.expect(
        "response, index in sender field",
        &udp4(SRC, PORT, &wg(2, 92, 4, KNOWN)),
        DROP,
        Some(Counter::DropUnknownReceiver),
    );
    r.expect(
        "cookie, unknown",
        &udp4(SRC, PORT, &wg(3, 64, 4, UNKNOWN)),
        DROP,
        Some(Counter::DropUnknownReceiver),
    );
    r.expect(
        "data, unknown",
        &udp4(SRC, PORT, &wg(4, 48, 4, UNKNOWN)),
        DROP,
        Some(Counter::DropUnknownReceiver),
    );
    // Types and reserved bytes.
    for kind in [0u8, 5, 0xff] {
        r.expect(
            "unknown type",
            &udp4(SRC, PORT, &wg(kind, 148, 4, 9)),
            DROP,
            Some(Counter::DropBadType),
        );
    }
    let mut reserved = wg(4, 48, 4, KNOWN);
    reserved[2] = 1;
    r.expect(
        "reserved byte",
        &udp4(SRC, PORT, &reserved),
        DROP,
        Some(Counter::DropBadType),
    );
    // Truncation.
    r.expect(
        "3-byte payload",
        &udp4(SRC, PORT, &[1, 0, 0]),
        DROP,
        Some(Counter::DropTruncated),
    );
    r.expect(
        "empty payload",
        &udp4(SRC, PORT, &[]),
        DROP,
        Some(Counter::DropTruncated),
    );
    let mut long = udp4(SRC, PORT, &wg(4, 48, 4, KNOWN));
    long.truncate(long.len() - 8);
    r.expect(
        "UDP length beyond the frame",
        &long,
        DROP,
        Some(Counter::DropTruncated),
    );
    // Ethernet padding after the datagram: the UDP length rules.
    let mut padded = udp4(SRC, PORT, &wg(4, 32, 4, KNOWN));
    padded.extend_from_slice(&[0; 12]);
    r.expect("padded frame", &padded, PASS, Some(Counter::PassData));
    // Fragments: the first is judged by the UDP length of the whole datagram, the
    // others pass uncounted (the kernel drops them when the first never comes).
    let first = |msg: &[u8]| {
        let udp = checksum_free_udp(40000, PORT, msg);
        ipv4_frame(SRC, 17, 0x2000, &udp[..udp.len().min(8 + 64)])
    };
    r.expect(
        "first fragment of data",
        &first(&wg(4, 32 + 1600, 4, KNOWN)),
        PASS,
        Some(Counter::PassFragment),
    );
    r.expect(
        "first fragment of an initiation",
        &first(&wg(1, 148, 4, 9)),
        PASS,
        Some(Counter::PassFragment),
    );
    r.expect(
        "first fragment, 60000-byte initiation",
        &first(&wg(1, 60000, 4, 9)),
        DROP,
        Some(Counter::DropBadLength),
    );
    r.expect(
        "first fragment, unknown receiver",
        &first(&wg(4, 32 + 1600, 4, UNKNOWN)),
        DROP,
        Some(Counter::DropUnknownReceiver),
    );
    r.expect(
        "first fragment, junk",
        &first(&[7u8; 300]),
        DROP,
        Some(Counter::DropBadType),
    );
    let later = ipv4_frame(SRC, 17, 0x0010, &[9; 64]);
    r.expect("later fragment", &later, PASS, None);
    // The same for IPv6's fragment header.
    let first6 = |msg: &[u8]| {
        let udp = checksum_free_udp(40000, PORT, msg);
        frag6(0, &udp[..udp.len().min(8 + 64)])
    };
    r.expect(
        "v6 first fragment of data",
        &first6(&wg(4, 32 + 1600, 4, KNOWN)),
        PASS,
        Some(Counter::PassFragment),
    );
    r.expect(
        "v6 first fragment, 60000-byte initiation",
        &first6(&wg(1, 60000, 4, 9)),
        DROP,
        Some(Counter::DropBadLength),
    );
    r.expect("v6 later fragment", &frag6(200, &[9; 64]), PASS, None);
    // IPv6, with and without an extension header, and a VLAN tag.
    r.expect(
        "v6 data",
        &udp6(PORT, false, &wg(4, 48, 4, KNOWN)),
        PASS,
        Some(Counter::PassData),
    );
    r.expect(
        "v6 junk",
        &udp6(PORT, false, b"hello world"),
        DROP,
        Some(Counter::DropBadType),
    );
    r.expect(
        "v6 hop-by-hop junk",
        &udp6(PORT, true, b"hello world"),
        DROP,
        Some(Counter::DropBadType),
    );
    r.expect(
        "v6 other port",
        &udp6(53, false, b"hello world"),
        PASS,
        None,
    );
    let mut vlan = eth(0x8100);
    vlan.extend_from_slice(&[0, 5]);
    vlan.extend_from_slice(&udp4(SRC, PORT, b"hello world")[12..]);
    r.expect("VLAN junk", &vlan, DROP, Some(Counter::DropBadType));
    // An index the dataplane let go of.
    r.p.sync_receivers(std::iter::empty()).unwrap();
    r.expect(
        "data, index released",
        &udp4(SRC, PORT, &wg(4, 48, 4, KNOWN)),
        DROP,
        Some(Counter::DropUnknownReceiver),
    );
    // Ports no longer guarded pass untouched.
    r.p.set_ports(&[]).unwrap();
    r.expect("unguarded port", &udp4(SRC, PORT, b"junk"), PASS, None);
}

#[test]
fn under_load_initiations_pass_a_per_source_token_bucket() {
    if !root() {
        return;
    }
    let mut p = program();
    p.set_rate(1, 5).unwrap();
    let mut r = Run::new(p);
    let init = |src| udp4(src, PORT, &wg(1, 148, 4, 9));
    // Not under load: no limit.
    for _ in 0..20 {
        r.expect(
            "not under load",
            &init(SRC),
            PASS,
            Some(Counter::PassInitiation),
        );
    }
    r.p.set_under_load(true).unwrap();
    for i in 0..5 {
        r.expect(
            &format!("burst {i}"),
            &init(SRC),
            PASS,
            Some(Counter::PassInitiation),
        );
    }
    r.expect(
        "over the burst",
        &init(SRC),
        DROP,
        Some(Counter::DropRateLimited),
    );
    r.expect(
        "still over",
        &init(SRC),
        DROP,
        Some(Counter::DropRateLimited),
    );
    // Another source has its own bucket; data is never rate limited.
    r.expect(
        "other source",
        &init([192, 0, 2, 8]),
        PASS,
        Some(Counter::PassInitiation),
    );
    r.p.add_receiver(KNOWN).unwrap();
    r.expect(
        "data under load",
        &udp4(SRC, PORT, &wg(4, 48, 4, KNOWN)),
        PASS,
        Some(Counter::PassData),
    );
    // At 1/s the bucket refills one initiation after a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    r.expect("refilled", &init(SRC), PASS, Some(Counter::PassInitiation));
    r.expect(
        "empty again",
        &init(SRC),
        DROP,
        Some(Counter::DropRateLimited),
    );
    r.p.set_under_load(false).unwrap();
    r.expect("load over", &init(SRC), PASS, Some(Counter::PassInitiation));
}

#[test]
fn under_load_an_ipv6_source_is_limited_by_its_64() {
    if !root() {
        return;
    }
    let mut p = program();
    p.set_rate(1, 5).unwrap();
    p.set_under_load(true).unwrap();
    let mut r = Run::new(p);
    // 2001:db8:0:1::/64 with a different interface identifier for every initiation.
    let from = |net: u16, host: u64| {
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, (net >> 8) as u8, net as u8]);
        a[8..].copy_from_slice(&host.to_be_bytes());
        udp6_from(a, PORT, false, &wg(1, 148, 4, 9))
    };
    for i in 0..5 {
        r.expect(
            &format!("burst {i}, a new address of the /64"),
            &from(1, 0x1000 + i),
            PASS,
            Some(Counter::PassInitiation),
        );
    }
    for i in 0..20 {
        r.expect(
            &format!("rotated address {i} of the same /64"),
            &from(1, 0xdead_0000 + i),
            DROP,
            Some(Counter::DropRateLimited),
        );
    }
    // Another /64 (even the neighbouring one) has its own bucket.
    for i in 0..5 {
        r.expect(
            &format!("another /64, burst {i}"),
            &from(2, 0x1000 + i),
            PASS,
            Some(Counter::PassInitiation),
        );
    }
    r.expect(
        "another /64, over its burst",
        &from(2, 7),
        DROP,
        Some(Counter::DropRateLimited),
    );
    // An IPv4 source never shares a bucket with an IPv6 /64.
    r.expect(
        "IPv4 source",
        &udp4(SRC, PORT, &wg(1, 148, 4, 9)),
        PASS,
        Some(Counter::PassInitiation),
    );
}

#[test]
fn steer_without_a_socket_falls_back_to_the_udp_socket() {
    if !root() {
        return;
    }
    let mut p = program();
    p.add_receiver(KNOWN).unwrap();
    p.set_steer(true, 2048).unwrap();
    let mut r = Run::new(p);
    // The test run's interface has no slot: the redirect falls back to PASS.
    r.expect(
        "data, no socket",
        &udp4(SRC, PORT, &wg(4, 48, 4, KNOWN)),
        PASS,
        Some(Counter::PassData),
    );
    r.expect(
        "junk still dropped",
        &udp4(SRC, PORT, b"junk"),
        DROP,
        Some(Counter::DropBadType),
    );
}
