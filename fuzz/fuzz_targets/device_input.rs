//! The whole receive and send path of a configured device, fed arbitrary datagrams,
//! TUN packets and clock steps. Handshake messages can have their MAC1 fixed up by
//! the harness so that the fuzzer reaches the Noise code behind it. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portdistrict_wg::device::{Device, Io, SendOutcome};
use portdistrict_wg::peer::Endpoint;
use portdistrict_wg::uapi::{parse_request, Request};
use portdistrict_wg::PrivateKey;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Sink;
impl Io for Sink {
    fn send_udp(&mut self, _: &Endpoint, _: &[u8]) -> SendOutcome {
        SendOutcome::Sent
    }
    fn write_tun(&mut self, _: &[u8]) {}
}

fn mac1_key(public: &[u8; 32]) -> [u8; 32] {
    use blake2::Digest;
    let mut h = blake2::Blake2s256::new();
    h.update(b"mac1----");
    h.update(public);
    h.finalize().into()
}

fn fix_mac1(key: &[u8; 32], msg: &mut [u8]) {
    use blake2::digest::{FixedOutput, KeyInit, Update};
    type Mac = blake2::Blake2sMac<blake2::digest::consts::U16>;
    let off = msg.len() - 32;
    let mut m = <Mac as KeyInit>::new_from_slice(key).expect("32-byte key");
    Update::update(&mut m, &msg[..off]);
    let out: [u8; 16] = m.finalize_fixed().into();
    msg[off..off + 16].copy_from_slice(&out);
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut dev = Device::new([3; 32], (t0, Duration::from_secs(1_700_000_000)), 1420);
    let ours = PrivateKey::from_bytes([1; 32]);
    let peer = PrivateKey::from_bytes([2; 32]).public_key();
    let cfg = format!(
        "set=1\nprivate_key={}\npublic_key={}\nendpoint=192.0.2.2:51820\nallowed_ip=10.0.0.0/8\nallowed_ip=fd00::/8\n\n",
        ours.to_hex(),
        peer.to_hex()
    );
    let Ok(Request::Set(req)) = parse_request(&cfg) else { return };
    dev.apply(now, &req, &mut Sink);
    let key = mac1_key(ours.public_key().as_bytes());
    let from: SocketAddr = "192.0.2.2:51820".parse().expect("address");
    // Framing: [op][len hi][len lo][bytes...] repeated.
    let mut rest = data;
    while rest.len() >= 3 {
        let op = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let mut chunk = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        match op % 4 {
            0 => dev.handle_datagram(now, from, None, &mut chunk, &mut Sink),
            1 => {
                if chunk.len() == 148 || chunk.len() == 92 {
                    fix_mac1(&key, &mut chunk);
                }
                dev.handle_datagram(now, from, None, &mut chunk, &mut Sink);
            }
            2 => dev.handle_tun_packet(now, &chunk, &mut Sink),
            _ => {
                now += Duration::from_millis(u64::from(op) * 500);
                dev.handle_timeout(now, &mut Sink);
            }
        }
    }
});
