//! Fuzzes the UAPI request parser: arbitrary bytes must never panic, every
//! error must carry a negative errno, and every parsed `set` must survive a
//! round trip through its canonical text and a `get` dump of its contents (read back
//! by `parse_get`, which must never panic on the raw bytes either).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portdistrict_wg::config::{ConfigChange, DeviceSnapshot, PeerSnapshot};
use portdistrict_wg::uapi::{
    format_errno, format_get, format_set, parse_get, parse_request_with, request_len, Request,
};

fuzz_target!(|data: &[u8]| {
    if let Some(len) = request_len(data) {
        assert!(len <= data.len());
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_get(text);
    match parse_request_with(text, &resolve_scope) {
        Ok(Request::Get) => {}
        Ok(Request::Set(req)) => check_set(&req),
        Err(e) => {
            assert!(e.errno() < 0, "{e}");
            let mut out = e.to_string();
            format_errno(&mut out, e.errno());
        }
    }
});

fn resolve_scope(name: &str) -> Option<u32> {
    (name == "eth0").then_some(2)
}

fn check_set(req: &ConfigChange) {
    let canonical = canonical_text(req);
    match parse_request_with(&canonical, &resolve_scope) {
        Ok(Request::Set(again)) => assert_eq!(&again, req, "{canonical}"),
        other => panic!("canonical text {canonical:?} parsed as {other:?}"),
    }
    let mut out = String::new();
    let snap = snapshot_of(req);
    format_get(&mut out, &snap);
    assert!(out.ends_with("errno=0\n\n"));
    assert_eq!(parse_get(&out).as_ref(), Ok(&snap), "{out}");
}

/// The request as a client sends it (the library's own formatter).
fn canonical_text(req: &ConfigChange) -> String {
    let mut t = String::new();
    format_set(&mut t, req);
    t
}

/// What a device would report after applying `req` to an empty device.
fn snapshot_of(req: &ConfigChange) -> DeviceSnapshot {
    let peers = req.peers.iter().filter(|p| !p.remove && !p.update_only);
    DeviceSnapshot {
        private_key: req.private_key.clone().flatten(),
        listen_port: req.listen_port.unwrap_or(0),
        fwmark: req.fwmark.unwrap_or(0),
        peers: peers
            .map(|p| PeerSnapshot {
                public_key: p.public_key,
                preshared_key: p.preshared_key.clone().unwrap_or_default(),
                endpoint: p.endpoint,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                persistent_keepalive_interval: p.persistent_keepalive_interval.unwrap_or(0),
                allowed_ips: p
                    .allowed_ips
                    .iter()
                    .filter(|ip| !ip.remove)
                    .map(|ip| (ip.addr, ip.cidr))
                    .collect(),
            })
            .collect(),
    }
}
