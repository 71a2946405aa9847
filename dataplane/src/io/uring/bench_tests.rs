//! A micro measurement, printed and not asserted: datagrams per second received from
//! one socket through the reactor, `recvmmsg_batch` and a plain `recvmsg` loop.
//!
//! Each round queues `PER_ROUND` 64-byte datagrams on the socket first and then times
//! only the receiving side, so sender scheduling does not enter the numbers. Run with
//! `cargo test -p portdistrict-dataplane --release -- uring::tests::bench --nocapture`.

use super::*;

const PER_ROUND: usize = 4000;
const ROUNDS: usize = 10;

/// Queues `PER_ROUND` datagrams on `udp`'s IPv4 socket.
fn fill(sender: &UdpSocket, port: u16) {
    let payload = [0x5a; 64];
    for _ in 0..PER_ROUND {
        sender.send_to(&payload, ("127.0.0.1", port)).unwrap();
    }
}

/// Rate over all rounds, given a function that receives `PER_ROUND` datagrams.
fn measure(sender: &UdpSocket, port: u16, mut recv_round: impl FnMut()) -> f64 {
    let mut spent = Duration::ZERO;
    for _ in 0..ROUNDS {
        fill(sender, port);
        let start = Instant::now();
        recv_round();
        spent += start.elapsed();
    }
    (PER_ROUND * ROUNDS) as f64 / spent.as_secs_f64()
}

#[test]
fn receive_rate_reactor_vs_recvmmsg_vs_recvmsg() {
    in_fresh_netns(|| {
        let tun = tun_down("pdurb");
        let udp = UdpSockets::bind(0, 0).unwrap();
        let fd = udp.v4_fd().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.port();

        let mut buf = vec![0u8; 65_536];
        let plain = measure(&sender, port, || {
            let mut n = 0;
            while n < PER_ROUND {
                match udp.recv(fd, &mut buf).unwrap() {
                    Some(_) => n += 1,
                    None => wait_readable(fd),
                }
            }
        });

        let mut batch = RecvBatch::new(64, 2048);
        let mmsg = measure(&sender, port, || {
            let mut n = 0;
            while n < PER_ROUND {
                match recvmmsg_batch(fd, &mut batch).unwrap() {
                    0 => wait_readable(fd),
                    got => n += got,
                }
            }
        });

        let cfg = ReactorConfig {
            udp_buffers: 256,
            udp_payload: 2048,
            ..small_config()
        };
        let mut reactor = Reactor::new(tun.as_fd(), [Some(fd), None], &[], cfg).unwrap();
        let mut turns = 0;
        let uring = measure(&sender, port, || {
            let mut n = 0;
            while n < PER_ROUND {
                turns += 1;
                reactor
                    .run_once(Duration::from_millis(100), |c| {
                        n += usize::from(matches!(c, Completion::Udp { .. }))
                    })
                    .unwrap();
            }
        });
        println!(
            "UDP receive, {} x 64-byte datagrams pre-queued on loopback: \
             recvmsg loop {:.0}/s, recvmmsg(64) {:.0}/s, io_uring reactor {:.0}/s \
             ({:.1} datagrams per run_once)",
            PER_ROUND * ROUNDS,
            plain,
            mmsg,
            uring,
            (PER_ROUND * ROUNDS) as f64 / f64::from(turns),
        );
    });
}
