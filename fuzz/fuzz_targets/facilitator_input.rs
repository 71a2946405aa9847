//! Fuzzes what reaches the NAT-traversal facilitator from the network: its request
//! parser (whatever parses is emitted back to the same bytes), the facilitator's
//! decisions over a sequence of datagrams from three nodes, the relay's decisions
//! over datagrams to its ports from arbitrary sources, and the inner IPv6/UDP parser.
//! Nothing may panic; every relay verdict forwards only between bound sources.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portdistrict_control::facilitator::inner;
use portdistrict_control_core::nat::facilitator::{Config, Facilitator};
use portdistrict_control_core::nat::relay::{bind_datagram, Limits, Relay, Side, Verdict};
use portdistrict_control_core::nat::wire::Message;
use portdistrict_wg::PublicKey;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            if let Ok(m) = Message::parse(rest) {
                assert_eq!(m.emit(), rest);
            }
        }
        1 => {
            // Chunks of up to 255 bytes, each from one of three nodes, 10 ms apart.
            let t0 = Instant::now();
            let mut f = Facilitator::new(Config::default());
            let mut out = Vec::new();
            let mut r = rest;
            let mut i = 0u64;
            while let Some((&len, tail)) = r.split_first() {
                let n = usize::from(len).min(tail.len());
                let (chunk, next) = tail.split_at(n);
                let key = PublicKey([(i % 3) as u8 + 1; 32]);
                let ep: SocketAddr = ([198, 51, 100, (i % 3) as u8 + 1], 51820).into();
                f.handle(t0 + Duration::from_millis(10 * i), key, ep, chunk, &mut out);
                r = next;
                i += 1;
            }
            f.expire(t0 + Duration::from_secs(3600));
        }
        2 => {
            let t0 = Instant::now();
            let mut relay = Relay::new(Limits::default());
            let side = |k: u8, port| Side {
                key: PublicKey([k; 32]),
                port,
                token: [k; 16],
                source: None,
            };
            assert!(relay.insert(t0, side(1, 40000), side(2, 40001)));
            let a: SocketAddr = ([198, 51, 100, 1], 1).into();
            let b: SocketAddr = ([198, 51, 100, 2], 2).into();
            relay.datagram(t0, 40000, a, &bind_datagram(&[1; 16]));
            relay.datagram(t0, 40001, b, &bind_datagram(&[2; 16]));
            // The sources bound to each side so far (a token holder may rebind).
            let mut bound = [Some(a), Some(b)];
            let mut r = rest;
            let mut i = 0u64;
            while r.len() >= 3 {
                let (head, tail) = r.split_at(3);
                let n = usize::from(head[2]).min(tail.len());
                let (payload, next) = tail.split_at(n);
                let port = 40000 + u16::from(head[0] % 3);
                let from: SocketAddr =
                    ([198, 51, 100, head[1] % 4], u16::from(head[1] % 3)).into();
                match relay.datagram(t0 + Duration::from_millis(i), port, from, payload) {
                    Verdict::Forward { from_port, to } => {
                        // Only the side's bound source, on its own port, to the other
                        // side's bound source, out of the other port.
                        let me = usize::from(port == 40001);
                        assert!(port == 40000 || port == 40001);
                        assert_eq!(bound[me], Some(from));
                        assert_eq!(from_port, if me == 0 { 40001 } else { 40000 });
                        assert_eq!(bound[1 - me], Some(to));
                    }
                    Verdict::Bound { key } => {
                        assert!(port == 40000 || port == 40001);
                        let me = usize::from(port == 40001);
                        assert_eq!(key, PublicKey([me as u8 + 1; 32]));
                        assert_eq!(payload, bind_datagram(&[me as u8 + 1; 16]));
                        bound[me] = Some(from);
                    }
                    Verdict::Drop => {}
                }
                r = next;
                i += 1;
            }
        }
        _ => {
            let _ = inner::parse(rest);
        }
    }
});
