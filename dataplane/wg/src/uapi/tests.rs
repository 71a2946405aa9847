//! Golden and error tests of the UAPI text format, one per rule of
//! wireguard-go's `device/uapi.go`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use super::*;
use crate::config::{AllowedIpChange, ConfigChange, DeviceSnapshot, PeerChange, PeerSnapshot};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};

const PK1: &str = "58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376";
const PK2: &str = "662e14fd594556f522604703340351258903b64f35553763f19426ab2a515c58";
const PK3: &str = "e818b58db5274087fcc1be5dc728cf53d3b5726b4cef6b9bab8f5e8500cc5c10";
const PSK: &str = "188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52";

fn pk(hex: &str) -> PublicKey {
    PublicKey::from_hex(hex).unwrap()
}

fn set(body: &str) -> Result<ConfigChange, UapiError> {
    match parse_request(&format!("set=1\n{body}\n"))? {
        Request::Set(req) => Ok(req),
        Request::Get => panic!("parsed a set as a get"),
    }
}

fn set_ok(body: &str) -> ConfigChange {
    set(body).unwrap_or_else(|e| panic!("{body:?}: {e}"))
}

fn peer_with(lines: &str) -> Result<PeerChange, UapiError> {
    let mut req = set(&format!("public_key={PK1}\n{lines}"))?;
    assert_eq!(req.peers.len(), 1);
    Ok(req.peers.remove(0))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn add(addr: &str, cidr: u8) -> AllowedIpChange {
    AllowedIpChange {
        addr: ip(addr),
        cidr,
        remove: false,
    }
}

/// Asserts an `InvalidValue` for `key` on `line`, with errno -EINVAL.
fn assert_invalid(result: Result<impl std::fmt::Debug, UapiError>, key: &str, line: usize) {
    match result {
        Err(e @ UapiError::InvalidValue { .. }) => {
            let UapiError::InvalidValue {
                line: l, key: k, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*k, *l), (key, line), "{e}");
            assert_eq!(e.errno(), -22);
            assert!(e.to_string().contains(key) && e.to_string().contains(&format!("line {line}")));
        }
        other => panic!("expected invalid {key} on line {line}, got {other:?}"),
    }
}

#[test]
fn golden_setconf_request() {
    // What `wg setconf wg0 conf` sends (wireguard-tools ipc-uapi.h order).
    let text = format!(
        "set=1\nprivate_key={}\nlisten_port=51820\nfwmark=4660\nreplace_peers=true\n\
         public_key={PK1}\npreshared_key={PSK}\nendpoint=192.0.2.1:51820\n\
         persistent_keepalive_interval=25\nreplace_allowed_ips=true\n\
         allowed_ip=10.0.0.0/8\nallowed_ip=fd00::/64\n\
         public_key={PK2}\nendpoint=[2001:db8::1]:51821\nreplace_allowed_ips=true\n\
         allowed_ip=0.0.0.0/0\nallowed_ip=-10.1.0.0/16\nprotocol_version=1\n\
         public_key={PK3}\nremove=true\n\n",
        "ff".repeat(32)
    );
    let Request::Set(req) = parse_request(&text).unwrap() else {
        panic!("not a set")
    };
    let mut clamped = [0xffu8; 32];
    clamped[0] = 0xf8;
    clamped[31] = 0x7f;
    let mut peer1 = PeerChange::new(pk(PK1));
    peer1.preshared_key = Some(PresharedKey::from_hex(PSK).unwrap());
    peer1.endpoint = Some("192.0.2.1:51820".parse().unwrap());
    peer1.persistent_keepalive_interval = Some(25);
    peer1.replace_allowed_ips = true;
    peer1.allowed_ips = vec![add("10.0.0.0", 8), add("fd00::", 64)];
    let mut peer2 = PeerChange::new(pk(PK2));
    peer2.endpoint = Some("[2001:db8::1]:51821".parse().unwrap());
    peer2.replace_allowed_ips = true;
    peer2.allowed_ips = vec![
        add("0.0.0.0", 0),
        AllowedIpChange {
            addr: ip("10.1.0.0"),
            cidr: 16,
            remove: true,
        },
    ];
    peer2.protocol_version = Some(1);
    let mut peer3 = PeerChange::new(pk(PK3));
    peer3.remove = true;
    let expected = ConfigChange {
        private_key: Some(Some(PrivateKey::from_bytes(clamped))),
        listen_port: Some(51820),
        fwmark: Some(4660),
        replace_peers: true,
        peers: vec![peer1, peer2, peer3],
    };
    assert_eq!(req, expected);
}

fn snapshot() -> DeviceSnapshot {
    let peer1 = PeerSnapshot {
        public_key: pk(PK1),
        preshared_key: PresharedKey::from_hex(PSK).unwrap(),
        endpoint: Some(SocketAddr::V6(SocketAddrV6::new(
            "fe80::1".parse().unwrap(),
            51820,
            0,
            3,
        ))),
        last_handshake: Some(Duration::new(1_700_000_000, 123_456_789)),
        rx_bytes: 1234,
        tx_bytes: 5678,
        persistent_keepalive_interval: 25,
        allowed_ips: vec![(ip("10.0.0.0"), 8), (ip("fd00::"), 64)],
    };
    let peer2 = PeerSnapshot {
        public_key: pk(PK2),
        preshared_key: PresharedKey::default(),
        endpoint: None,
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
        persistent_keepalive_interval: 0,
        allowed_ips: vec![],
    };
    DeviceSnapshot {
        private_key: Some(PrivateKey::from_bytes([0x11; 32])),
        listen_port: 51820,
        fwmark: 0x1234,
        peers: vec![peer1, peer2],
    }
}

#[test]
fn golden_get_answer() {
    let mut out = String::new();
    format_get(&mut out, &snapshot());
    let zeros = "0".repeat(64);
    let expected = format!(
        "private_key={}\nlisten_port=51820\nfwmark=4660\n\
         public_key={PK1}\npreshared_key={PSK}\nprotocol_version=1\n\
         endpoint=[fe80::1%3]:51820\nlast_handshake_time_sec=1700000000\n\
         last_handshake_time_nsec=123456789\ntx_bytes=5678\nrx_bytes=1234\n\
         persistent_keepalive_interval=25\nallowed_ip=10.0.0.0/8\nallowed_ip=fd00::/64\n\
         public_key={PK2}\npreshared_key={zeros}\nprotocol_version=1\n\
         last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
         persistent_keepalive_interval=0\nerrno=0\n\n",
        "11".repeat(32)
    );
    assert_eq!(out, expected);
}

#[test]
fn get_omits_unset_device_fields_and_prints_v4_endpoints_bare() {
    let mut snap = snapshot();
    snap.private_key = Some(PrivateKey::from_bytes([0; 32]));
    snap.listen_port = 0;
    snap.fwmark = 0;
    snap.peers.truncate(1);
    snap.peers[0].endpoint = Some("192.0.2.1:1".parse().unwrap());
    let mut out = String::new();
    format_get(&mut out, &snap);
    assert!(out.starts_with(&format!("public_key={PK1}\n")), "{out}");
    assert!(out.contains("\nendpoint=192.0.2.1:1\n"));
    snap.private_key = None;
    let mut again = String::new();
    format_get(&mut again, &snap);
    assert_eq!(out, again);
}

#[test]
fn errno_line() {
    let mut out = String::from("x");
    format_errno(&mut out, -22);
    assert_eq!(out, "xerrno=-22\n\n");
}

#[test]
fn get_request() {
    assert_eq!(parse_request("get=1\n\n"), Ok(Request::Get));
    let e = parse_request("get=1\nlisten_port=1\n\n").unwrap_err();
    assert!(matches!(e, UapiError::GetNotTerminated(_)), "{e}");
    assert_eq!(e.errno(), -22);
    assert!(!e.closes_connection());
    assert!(matches!(
        parse_request("get=1\n"),
        Err(UapiError::GetNotTerminated(_))
    ));
}

#[test]
fn unknown_operation_closes_the_connection() {
    for text in ["get=2\n\n", "set=1\r\n\n", "GET=1\n\n", "get=1", "", "\n"] {
        let e = parse_request(text).unwrap_err();
        assert!(matches!(e, UapiError::UnknownOperation(_)), "{text:?}: {e}");
        assert!(e.closes_connection());
        assert_eq!(e.errno(), -22);
    }
}

#[test]
fn line_without_equals_is_a_protocol_error() {
    let e = set("listen_port=1\nfwmark").unwrap_err();
    assert_eq!(
        e,
        UapiError::MissingEquals {
            line: 3,
            text: "fwmark".into()
        }
    );
    assert_eq!(e.errno(), -71);
    assert!(e.to_string().contains("line 3"), "{e}");
}

#[test]
fn unknown_device_key() {
    let e = set("listen_prt=1").unwrap_err();
    assert_eq!(
        e,
        UapiError::UnknownDeviceKey {
            line: 2,
            key: "listen_prt".into()
        }
    );
    assert_eq!(e.errno(), -22);
}

#[test]
fn peer_key_before_public_key() {
    let e = set("endpoint=192.0.2.1:1").unwrap_err();
    assert_eq!(
        e,
        UapiError::UnknownDeviceKey {
            line: 2,
            key: "endpoint".into()
        }
    );
    assert!(e.to_string().contains("public_key"), "{e}");
}

#[test]
fn device_key_after_public_key() {
    let e = set(&format!("public_key={PK1}\nlisten_port=1")).unwrap_err();
    assert_eq!(
        e,
        UapiError::UnknownPeerKey {
            line: 3,
            key: "listen_port".into()
        }
    );
    assert_eq!(e.errno(), -22);
}

#[test]
fn unknown_peer_key() {
    let e = peer_with("allowed_ips=10.0.0.0/8").unwrap_err();
    assert_eq!(
        e,
        UapiError::UnknownPeerKey {
            line: 3,
            key: "allowed_ips".into()
        }
    );
}

#[test]
fn booleans_accept_only_true() {
    assert!(set_ok("replace_peers=true").replace_peers);
    let peer = peer_with("remove=true\nupdate_only=true\nreplace_allowed_ips=true").unwrap();
    assert!(peer.remove && peer.update_only && peer.replace_allowed_ips);
    for bad in ["false", "1", "TRUE", "", "true "] {
        assert_invalid(set(&format!("replace_peers={bad}")), "replace_peers", 2);
        for key in ["remove", "update_only", "replace_allowed_ips"] {
            assert_invalid(peer_with(&format!("{key}={bad}")), key, 3);
        }
    }
}

#[test]
fn protocol_version_must_be_1() {
    assert_eq!(
        peer_with("protocol_version=1").unwrap().protocol_version,
        Some(1)
    );
    for bad in ["2", "0", "01", "", " 1"] {
        assert_invalid(
            peer_with(&format!("protocol_version={bad}")),
            "protocol_version",
            3,
        );
    }
}

#[test]
fn keys_are_64_hex_digits() {
    let upper = set_ok(&format!("public_key={}", PK1.to_uppercase()));
    assert_eq!(upper.peers[0].public_key, pk(PK1));
    let short = &PK1[..62];
    let bad_char = format!("{}g", &PK1[..63]);
    for bad in [short, bad_char.as_str(), "", &format!("{PK1}00")] {
        assert_invalid(set(&format!("private_key={bad}")), "private_key", 2);
        assert_invalid(set(&format!("public_key={bad}")), "public_key", 2);
        assert_invalid(
            peer_with(&format!("preshared_key={bad}")),
            "preshared_key",
            3,
        );
    }
}

#[test]
fn secret_values_are_not_echoed() {
    let almost = &PSK[..63];
    let e = set(&format!("private_key={almost}")).unwrap_err();
    assert!(!e.to_string().contains(almost), "{e}");
    let e = peer_with(&format!("preshared_key={almost}")).unwrap_err();
    assert!(!e.to_string().contains(almost), "{e}");
}

#[test]
fn zero_private_key_removes_it_and_keys_are_clamped() {
    let zeros = "0".repeat(64);
    assert_eq!(
        set_ok(&format!("private_key={zeros}")).private_key,
        Some(None)
    );
    let key = set_ok(&format!(
        "private_key={}",
        "00".repeat(32).replacen("00", "01", 1)
    ))
    .private_key
    .unwrap()
    .unwrap();
    let mut expected = [0u8; 32];
    expected[31] = 0x40;
    assert_eq!(key, PrivateKey::from_bytes(expected));
    let psk = peer_with(&format!("preshared_key={zeros}"))
        .unwrap()
        .preshared_key;
    assert!(psk.unwrap().is_zero());
}

#[test]
fn numbers_are_plain_decimal_in_range() {
    let req = set_ok("listen_port=0080\nfwmark=4294967295");
    assert_eq!((req.listen_port, req.fwmark), (Some(80), Some(u32::MAX)));
    assert_eq!(set_ok("fwmark=0").fwmark, Some(0));
    for bad in ["65536", "-1", "+1", " 1", "", "0x10", "1_0"] {
        assert_invalid(set(&format!("listen_port={bad}")), "listen_port", 2);
        assert_invalid(
            peer_with(&format!("persistent_keepalive_interval={bad}")),
            "persistent_keepalive_interval",
            3,
        );
    }
    assert_invalid(set("fwmark=4294967296"), "fwmark", 2);
    assert_invalid(set("fwmark=-1"), "fwmark", 2);
}

#[test]
fn endpoints() {
    let ep = |s: &str| peer_with(&format!("endpoint={s}")).map(|p| p.endpoint.unwrap());
    assert_eq!(
        ep("192.0.2.1:51820").unwrap(),
        "192.0.2.1:51820".parse().unwrap()
    );
    assert_eq!(ep("[::1]:0").unwrap(), "[::1]:0".parse().unwrap());
    let scoped = SocketAddrV6::new("fe80::1".parse().unwrap(), 51820, 0, 3);
    assert_eq!(ep("[fe80::1%3]:51820").unwrap(), SocketAddr::V6(scoped));
    let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::new(1, 2, 3, 4).to_ipv6_mapped()), 9);
    assert_eq!(ep("[::ffff:1.2.3.4]:9").unwrap(), mapped);
    for bad in [
        "192.0.2.1",
        "192.0.2.1:",
        ":51820",
        "::1:51820",
        "[::1]",
        "[::1:51820",
        "[192.0.2.1]:1",
        "192.0.2.1:65536",
        "192.0.2.1:+1",
        "example.com:51820",
        "[fe80::1%]:1",
        "[fe80::1%eth0]:1",
        "192.0.2.1%3:1",
        "01.2.3.4:1",
    ] {
        assert_invalid(ep(bad), "endpoint", 3);
    }
}

#[test]
fn endpoint_scope_names_use_the_resolver() {
    let text = format!("set=1\npublic_key={PK1}\nendpoint=[fe80::1%eth0]:51820\n\n");
    let resolve = |name: &str| (name == "eth0").then_some(7);
    let Request::Set(req) = parse_request_with(&text, &resolve).unwrap() else {
        panic!()
    };
    let expected = SocketAddrV6::new("fe80::1".parse().unwrap(), 51820, 0, 7);
    assert_eq!(req.peers[0].endpoint, Some(SocketAddr::V6(expected)));
    let other = text.replace("eth0", "eth1");
    assert_invalid(parse_request_with(&other, &resolve), "endpoint", 3);
}

#[test]
fn allowed_ips() {
    let one = |s: &str| peer_with(&format!("allowed_ip={s}")).map(|p| p.allowed_ips[0]);
    assert_eq!(one("10.0.0.0/8").unwrap(), add("10.0.0.0", 8));
    assert_eq!(one("10.0.0.1/0").unwrap(), add("10.0.0.1", 0));
    assert_eq!(one("fd00::/128").unwrap(), add("fd00::", 128));
    assert_eq!(
        one("::ffff:10.0.0.0/104").unwrap(),
        add("::ffff:10.0.0.0", 104)
    );
    let removed = one("-fd00::/64").unwrap();
    assert_eq!(
        removed,
        AllowedIpChange {
            addr: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)),
            cidr: 64,
            remove: true
        }
    );
    for bad in [
        "10.0.0.1",
        "fd00::",
        "10.0.0.0/33",
        "fd00::/129",
        "10.0.0.0/08",
        "10.0.0.0/+8",
        "10.0.0.0/-8",
        "10.0.0.0/",
        "10.0.0.0/256",
        "/8",
        "--10.0.0.0/8",
        "fe80::%1/64",
        "10.0.0.0/8/8",
    ] {
        assert_invalid(one(bad), "allowed_ip", 3);
    }
}

#[test]
fn replace_allowed_ips_drops_earlier_lines_of_that_peer() {
    let peer = peer_with("allowed_ip=10.0.0.0/8\nreplace_allowed_ips=true\nallowed_ip=10.1.0.0/16")
        .unwrap();
    assert!(peer.replace_allowed_ips);
    assert_eq!(peer.allowed_ips, vec![add("10.1.0.0", 16)]);
}

#[test]
fn repeated_keys_last_wins_and_peers_keep_order() {
    let req = set_ok(&format!(
        "listen_port=1\nlisten_port=2\npublic_key={PK1}\nendpoint=192.0.2.1:1\n\
         endpoint=192.0.2.2:2\npublic_key={PK2}\npublic_key={PK1}\nupdate_only=true"
    ));
    assert_eq!(req.listen_port, Some(2));
    let keys: Vec<_> = req.peers.iter().map(|p| p.public_key).collect();
    assert_eq!(keys, vec![pk(PK1), pk(PK2), pk(PK1)]);
    assert_eq!(req.peers[0].endpoint, Some("192.0.2.2:2".parse().unwrap()));
    assert!(req.peers[2].update_only && !req.peers[0].update_only);
}

#[test]
fn line_endings_and_termination() {
    let crlf = parse_request(&format!(
        "set=1\npublic_key={PK1}\r\nallowed_ip=10.0.0.0/8\r\n\r\n"
    ));
    let Ok(Request::Set(req)) = crlf else {
        panic!("{crlf:?}")
    };
    assert_eq!(req.peers[0].allowed_ips, vec![add("10.0.0.0", 8)]);
    // A set may end at EOF; nothing after the blank line belongs to it.
    assert_eq!(
        parse_request("set=1\nlisten_port=5"),
        parse_request("set=1\nlisten_port=5\n\nbogus\n")
    );
    assert_eq!(
        parse_request("set=1\n"),
        Ok(Request::Set(ConfigChange::default()))
    );
}

#[test]
fn an_error_anywhere_rejects_the_whole_request() {
    let mut body = format!("listen_port=1\npublic_key={PK1}\n");
    for i in 0..1000 {
        body.push_str(&format!("allowed_ip=10.{}.{}.0/24\n", i / 256, i % 256));
    }
    body.push_str("allowed_ip=10.0.0.0/99");
    assert_invalid(set(&body), "allowed_ip", 1004);
}

#[test]
fn long_keys_are_shortened_in_errors() {
    let e = set(&format!("{}=1", "k".repeat(10_000))).unwrap_err();
    assert!(e.to_string().len() < 300, "{e}");
}

#[test]
fn non_utf8_converts_into_an_error() {
    let bytes = [b"set=1\n".as_slice(), &[0xff], b"=1\n\n"].concat();
    let e: UapiError = std::str::from_utf8(&bytes).unwrap_err().into();
    assert!(matches!(e, UapiError::NotUtf8(_)));
    assert_eq!(e.errno(), -22);
}

#[test]
fn request_len_frames_requests() {
    assert_eq!(request_len(b"get=1\n"), None);
    assert_eq!(request_len(b"get=1\n\nget=1\n\n"), Some(7));
    assert_eq!(request_len(b"get=1\nx"), Some(7));
    assert_eq!(request_len(b"set=1\nlisten_port=1\n"), None);
    assert_eq!(request_len(b"set=1\nlisten_port=1\n\nget"), Some(21));
    assert_eq!(request_len(b"set=1\nlisten_port=1\r\n\r\n"), Some(23));
    assert_eq!(request_len(b"set=1\n\n"), Some(7));
    assert_eq!(request_len(b"bogus\nmore"), Some(6));
    assert_eq!(request_len(b"get=1"), None);
}

/// 200,000 prefixes, as in ARCHITECTURE.md's UAPI scaling requirement.
fn many_prefixes() -> Vec<(IpAddr, u8)> {
    (0..200_000u32)
        .map(|i| (IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i << 8))), 24))
        .collect()
}

/// Wall time of `f`. Tests may read the clock; the protocol code may not.
#[allow(clippy::disallowed_methods)]
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = std::time::Instant::now();
    let value = f();
    (value, start.elapsed())
}

/// The bound asked for: "well under a second". Takes ~60 ms in a debug build.
fn budget() -> Duration {
    Duration::from_secs(1)
}

#[test]
fn parses_200k_allowed_ips_quickly() {
    let prefixes = many_prefixes();
    let mut text = format!("set=1\npublic_key={PK1}\nreplace_allowed_ips=true\n");
    for (addr, cidr) in &prefixes {
        text.push_str(&format!("allowed_ip={addr}/{cidr}\n"));
    }
    text.push('\n');
    let (parsed, took) = timed(|| parse_request(&text));
    let Ok(Request::Set(req)) = parsed else {
        panic!("{parsed:?}")
    };
    assert_eq!(req.peers[0].allowed_ips.len(), 200_000);
    assert_eq!(
        req.peers[0].allowed_ips[199_999],
        AllowedIpChange {
            addr: prefixes[199_999].0,
            cidr: 24,
            remove: false
        }
    );
    assert!(took < budget(), "parsing took {took:?}");
}

#[test]
fn formats_200k_allowed_ips_quickly() {
    let mut snap = snapshot();
    snap.peers[1].allowed_ips = many_prefixes();
    let (out, took) = timed(|| {
        let mut out = String::new();
        format_get(&mut out, &snap);
        out
    });
    assert_eq!(out.matches("\nallowed_ip=").count(), 200_002);
    let (last, _) = snap.peers[1].allowed_ips[199_999];
    assert!(out.ends_with(&format!("allowed_ip={last}/24\nerrno=0\n\n")));
    assert!(took < budget(), "formatting took {took:?}");
}

#[test]
fn format_set_reads_back_as_the_same_request() {
    let body = format!(
        "private_key={PK3}\nlisten_port=51820\nfwmark=51820\nreplace_peers=true\n\
         public_key={PK1}\npreshared_key={PSK}\nendpoint=[2001:db8::1]:51820\n\
         persistent_keepalive_interval=25\nprotocol_version=1\nreplace_allowed_ips=true\n\
         allowed_ip=10.0.0.0/8\nallowed_ip=-fd00::/64\n\
         public_key={PK2}\nremove=true\n\
         public_key={PK3}\nupdate_only=true\nendpoint=192.0.2.1:1\n"
    );
    let req = set_ok(&body);
    let mut text = String::new();
    format_set(&mut text, &req);
    assert!(
        text.starts_with("set=1\n") && text.ends_with("\n\n"),
        "{text:?}"
    );
    match parse_request(&text) {
        Ok(Request::Set(again)) => assert_eq!(again, req, "{text}"),
        other => panic!("{text:?} parsed as {other:?}"),
    }
    // A cleared private key is sent as all zeros.
    let clear = set_ok(&format!("private_key={}\n", "0".repeat(64)));
    let mut text = String::new();
    format_set(&mut text, &clear);
    assert!(text.contains(&format!("private_key={}\n", "0".repeat(64))));
}

/// Feeds `input` to a fresh framer in chunks of `chunk` bytes and collects what it
/// returns until it needs more input or fails; then `finish` at the end of input.
fn frame(
    input: &[u8],
    chunk: usize,
    limits: (usize, usize),
) -> (Vec<String>, Result<(), FrameError>) {
    let mut f = Framer::new(limits.0, limits.1);
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        f.push(piece);
        loop {
            match f.next_request() {
                Ok(Some(r)) => out.push(r),
                Ok(None) => break,
                Err(e) => return (out, Err(e)),
            }
        }
    }
    let end = f.finish();
    (out, end)
}

#[test]
fn framer_returns_complete_requests_only() {
    let input = b"get=1\n\nset=1\nlisten_port=1\r\n\r\nstats=1\n\n";
    for chunk in [1, 2, 5, input.len()] {
        let (got, end) = frame(input, chunk, (LINE_MAX, REQUEST_MAX));
        assert_eq!(
            got,
            ["get=1\n\n", "set=1\nlisten_port=1\r\n\r\n", "stats=1\n\n"],
            "chunk {chunk}"
        );
        assert_eq!(end, Ok(()));
    }
}

#[test]
fn framer_refuses_a_request_cut_short() {
    // A set whose blank line never came: nothing is returned, the end is an error.
    let (got, end) = frame(
        b"set=1\nreplace_peers=true\nlisten_port=1\n",
        7,
        (LINE_MAX, REQUEST_MAX),
    );
    assert!(got.is_empty());
    let e = end.unwrap_err();
    assert_eq!(e, FrameError::Truncated { lines: 3 });
    assert_eq!(e.errno(), -22);
    // A partial last line counts as begun too.
    let (got, end) = frame(b"get=1\n\nset=1\nlisten_p", 4, (LINE_MAX, REQUEST_MAX));
    assert_eq!(got, ["get=1\n\n"]);
    assert_eq!(end, Err(FrameError::Truncated { lines: 1 }));
    assert_eq!(FrameError::TimedOut { secs: 30 }.errno(), -22);
}

#[test]
fn framer_refuses_a_line_that_is_not_utf8() {
    // The bug this guards against: `set=1`, `replace_peers=true`, then a bad line
    // was applied up to the bad line (all peers removed) and answered errno=0.
    let (got, end) = frame(
        b"set=1\nreplace_peers=true\n\xff\xfe\nlisten_port=1\n\n",
        3,
        (LINE_MAX, REQUEST_MAX),
    );
    assert!(got.is_empty(), "{got:?}");
    let e = end.unwrap_err();
    assert_eq!(e, FrameError::NotUtf8 { line: 3 });
    assert_eq!(e.errno(), -22);
    assert!(e.to_string().contains("line 3"), "{e}");
}

#[test]
fn framer_refuses_an_overlong_line_before_its_newline() {
    // 1 MiB without a newline is refused as soon as it passes the line limit, so
    // the buffer never holds much more than the limit.
    let mut f = Framer::new(1024, REQUEST_MAX);
    f.push(b"set=1\n");
    assert_eq!(f.next_request(), Ok(None));
    let mut refused = None;
    for i in 0..1024 {
        f.push(&[b'a'; 1024]);
        if let Err(e) = f.next_request() {
            refused = Some((i, e));
            break;
        }
    }
    let (i, e) = refused.expect("an overlong line was held");
    assert!(i <= 1, "refused only after {i} KiB");
    assert!(f.buffered() <= 2 * 1024 + 6);
    assert_eq!(e, FrameError::LineTooLong { line: 2, max: 1024 });
    assert_eq!(e.errno(), -90);
    // A long line with its newline is refused too.
    let mut long = b"set=1\nallowed_ip=".to_vec();
    long.extend(std::iter::repeat_n(b'1', 2000));
    long.extend_from_slice(b"\n\n");
    let (got, end) = frame(&long, 4096, (1024, REQUEST_MAX));
    assert!(got.is_empty());
    assert_eq!(end, Err(FrameError::LineTooLong { line: 2, max: 1024 }));
}

#[test]
fn framer_caps_the_request_size() {
    let mut big = b"set=1\n".to_vec();
    for _ in 0..100 {
        big.extend_from_slice(b"allowed_ip=10.0.0.0/8\n");
    }
    big.extend_from_slice(b"\n");
    let (got, end) = frame(&big, 64, (LINE_MAX, 1000));
    assert!(got.is_empty());
    assert_eq!(end, Err(FrameError::RequestTooLarge { max: 1000 }));
    // The same request under a limit it fits in.
    let (got, end) = frame(&big, 64, (LINE_MAX, big.len()));
    assert_eq!(got.len(), 1);
    assert_eq!(end, Ok(()));
}

#[test]
fn framer_defaults_fit_a_million_allowed_ips() {
    // 200k of the longest AllowedIP lines go through under the default limits...
    let line = "allowed_ip=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128\n";
    let mut request = format!("set=1\npublic_key={PK1}\n");
    for _ in 0..200_000 {
        request.push_str(line);
    }
    request.push('\n');
    let (got, end) = frame(request.as_bytes(), 64 * 1024, (LINE_MAX, REQUEST_MAX));
    assert_eq!(end, Ok(()));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), request.len());
    // ...and five times as many would too.
    assert!(5 * request.len() < REQUEST_MAX);
}

#[test]
fn get_answers_read_back_into_the_snapshot() {
    let mut out = String::new();
    format_get(&mut out, &snapshot());
    assert_eq!(parse_get(&out), Ok(snapshot()));
    // Unset device fields and a zero key are omitted by format_get and read as unset.
    let mut snap = snapshot();
    snap.private_key = None;
    snap.listen_port = 0;
    snap.fwmark = 0;
    snap.peers[0].endpoint = Some("192.0.2.1:51820".parse().unwrap());
    let mut out = String::new();
    format_get(&mut out, &snap);
    assert_eq!(parse_get(&out), Ok(snap));
    assert_eq!(parse_get("errno=0\n\n"), Ok(DeviceSnapshot::default()));
}

#[test]
fn malformed_get_answers_are_typed_errors() {
    let peer = format!("public_key={PK1}\n");
    let cases: Vec<(String, GetError)> = vec![
        ("errno=-22\n\n".into(), GetError::Errno(-22)),
        (format!("listen_port=1\n{peer}"), GetError::MissingErrno),
        ("listen_port=1\n\nerrno=0\n".into(), GetError::MissingErrno),
        (
            "listen_port\nerrno=0\n\n".into(),
            GetError::MissingEquals {
                line: 1,
                text: "listen_port".into(),
            },
        ),
        (
            "rx_bytes=1\nerrno=0\n\n".into(),
            GetError::UnexpectedKey {
                line: 1,
                key: "rx_bytes".into(),
            },
        ),
        (
            format!("{peer}fwmark=1\nerrno=0\n\n"),
            GetError::UnexpectedKey {
                line: 2,
                key: "fwmark".into(),
            },
        ),
    ];
    for (text, want) in cases {
        assert_eq!(parse_get(&text), Err(want), "{text:?}");
    }
    for bad in [
        "listen_port=70000\n".to_owned(),
        "public_key=zz\n".to_owned(),
        "private_key=12\n".to_owned(),
        format!("{peer}endpoint=10.0.0.1\n"),
        format!("{peer}allowed_ip=-10.0.0.0/8\n"),
        format!("{peer}allowed_ip=10.0.0.0/33\n"),
        format!("{peer}last_handshake_time_nsec=1000000000\n"),
        format!("{peer}tx_bytes=-1\n"),
        format!("{peer}protocol_version=2\n"),
        "errno=x\n".to_owned(),
    ] {
        let text = format!("{bad}errno=0\n\n");
        assert!(
            matches!(parse_get(&text), Err(GetError::InvalidValue { .. })),
            "{text:?}: {:?}",
            parse_get(&text)
        );
    }
    // A secret that does not parse is not echoed.
    let e = parse_get("private_key=123456\nerrno=0\n\n").unwrap_err();
    assert!(!e.to_string().contains("123456"), "{e}");
}
