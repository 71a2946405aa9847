//! `pd-flood --to ADDR:PORT [--malformed N] [--initiations M --spoof-net A.B --sources K [--public-key KEY] [--init-every E]] [--min-seconds S]`
//!
//! The attacker of the XDP flood test and of pd-bench's flood scenario: sends `N`
//! malformed datagrams at a WireGuard port from its own address (unknown message
//! types, wrong lengths, nonzero reserved bytes, truncated headers, data and
//! responses naming receiver indices nobody holds), and, interleaved, `M` handshake
//! initiations of the right size from `K` spoofed IPv4 sources `A.B.x.y` (raw socket,
//! so only as root), with a valid MAC1 for the target's `--public-key` (public, so
//! any attacker can: the initiations then count as handshake load, as a real flood
//! would); keeps sending malformed datagrams until `S` seconds have passed.
//! Prints `malformed=N initiations=M seconds=T` when done. Deterministic content
//! (a fixed-seed generator); bounded by its counts.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

struct Args {
    to: SocketAddr,
    malformed: u64,
    initiations: u64,
    spoof: [u8; 2],
    sources: u32,
    min_seconds: f64,
    mac1_key: Option<[u8; 32]>,
    init_every: Option<u64>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        to: "127.0.0.1:51820".parse().unwrap(),
        malformed: 1_000_000,
        initiations: 0,
        spoof: [10, 66],
        sources: 256,
        min_seconds: 0.0,
        mac1_key: None,
        init_every: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{k} {v}: {e}");
        match k.as_str() {
            "--to" => a.to = v.parse().map_err(|e| bad(&e))?,
            "--malformed" => a.malformed = v.parse().map_err(|e| bad(&e))?,
            "--initiations" => a.initiations = v.parse().map_err(|e| bad(&e))?,
            "--sources" => a.sources = v.parse().map_err(|e| bad(&e))?,
            "--min-seconds" => a.min_seconds = v.parse().map_err(|e| bad(&e))?,
            "--init-every" => a.init_every = Some(v.parse::<u64>().map_err(|e| bad(&e))?.max(1)),
            "--public-key" => {
                let key = portdistrict_wg::PublicKey::from_base64(v).map_err(|e| bad(&e))?;
                a.mac1_key = Some(portdistrict_wg::crypto::hash(&[
                    portdistrict_wg::crypto::LABEL_MAC1,
                    key.as_bytes(),
                ]));
            }
            "--spoof-net" => {
                let (x, y) = v.split_once('.').ok_or_else(|| bad(&"expected A.B"))?;
                a.spoof = [
                    x.parse().map_err(|e| bad(&e))?,
                    y.parse().map_err(|e| bad(&e))?,
                ];
            }
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if a.sources == 0 {
        return Err("--sources must be at least 1".into());
    }
    Ok(a)
}

/// xorshift64*: deterministic junk.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            c.copy_from_slice(&r[..c.len()]);
        }
    }
}

/// The `i`-th malformed datagram, written into `buf`; returns its length.
fn malformed(i: u64, rng: &mut Rng, buf: &mut [u8; 256]) -> usize {
    match i % 8 {
        // Unknown message types.
        0 => {
            rng.fill(&mut buf[..100]);
            buf[0] = 5 + (i % 200) as u8;
            100
        }
        // An initiation of the wrong length.
        1 => {
            rng.fill(&mut buf[..147]);
            buf[..4].copy_from_slice(&[1, 0, 0, 0]);
            147
        }
        // Nonzero reserved bytes.
        2 => {
            rng.fill(&mut buf[..148]);
            buf[..4].copy_from_slice(&[1, 0, 7, 0]);
            148
        }
        // Too short for a message type.
        3 => {
            buf[..3].copy_from_slice(&[4, 0, 0]);
            3
        }
        // Data naming a receiver nobody holds.
        4 | 5 => {
            rng.fill(&mut buf[..96]);
            buf[..4].copy_from_slice(&[4, 0, 0, 0]);
            96
        }
        // A response naming a receiver nobody holds.
        6 => {
            rng.fill(&mut buf[..92]);
            buf[..4].copy_from_slice(&[2, 0, 0, 0]);
            92
        }
        // Data with a plaintext too short to be an IP packet.
        _ => {
            rng.fill(&mut buf[..40]);
            buf[..4].copy_from_slice(&[4, 0, 0, 0]);
            40
        }
    }
}

fn checksum(words: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in words.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw IPv4 socket (IP_HDRINCL) for the spoofed initiations.
struct Raw(i32);

impl Raw {
    fn open() -> std::io::Result<Raw> {
        // SAFETY: plain socket creation; checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Raw(fd))
    }

    fn send(&self, packet: &[u8], dst: Ipv4Addr) -> std::io::Result<()> {
        // SAFETY: sockaddr_in is plain data.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        // SAFETY: `packet` and `sa` are valid for the lengths given.
        let r = unsafe {
            libc::sendto(
                self.0,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: our own descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// A spoofed initiation: IPv4 + UDP (checksum 0) + 148 bytes of type 1.
fn initiation(
    src: Ipv4Addr,
    to: SocketAddr,
    sport: u16,
    rng: &mut Rng,
    mac1_key: Option<&[u8; 32]>,
    out: &mut [u8; 176],
) {
    let SocketAddr::V4(to) = to else {
        unreachable!()
    };
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&176u16.to_be_bytes());
    out[8] = 64;
    out[9] = 17;
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&to.ip().octets());
    let c = checksum(&out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out[20..22].copy_from_slice(&sport.to_be_bytes());
    out[22..24].copy_from_slice(&to.port().to_be_bytes());
    out[24..26].copy_from_slice(&156u16.to_be_bytes());
    rng.fill(&mut out[28..176]);
    out[28..32].copy_from_slice(&[1, 0, 0, 0]);
    // MAC1 over the message up to it (116 bytes); MAC2 zero (no cookie).
    if let Some(key) = mac1_key {
        let mac1 = portdistrict_wg::crypto::mac(key, &out[28..28 + 116]);
        out[28 + 116..28 + 132].copy_from_slice(&mac1);
        out[28 + 132..176].fill(0);
    }
}

fn main() -> std::process::ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pd-flood: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let bind = if a.to.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(bind).expect("bind a UDP socket");
    let raw = if a.initiations > 0 {
        if !a.to.is_ipv4() {
            eprintln!("pd-flood: spoofed initiations are IPv4 only");
            return std::process::ExitCode::from(2);
        }
        Some(Raw::open().expect("raw socket (needs root)"))
    } else {
        None
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = [0u8; 256];
    let mut pkt = [0u8; 176];
    let start = Instant::now();
    let (mut sent, mut inits, mut errors) = (0u64, 0u64, 0u64);
    // One initiation every `every` malformed datagrams spreads them over the run.
    let every = a.init_every.unwrap_or_else(|| {
        a.malformed
            .checked_div(a.initiations)
            .map_or(u64::MAX, |e| e.max(1))
    });
    let min = Duration::from_secs_f64(a.min_seconds);
    // Bounded: the counts, then until `min_seconds`, and never beyond 120 s.
    loop {
        let more_time = start.elapsed() < min;
        let want_malformed = sent < a.malformed || more_time;
        let want_init = raw.is_some() && a.initiations > 0 && (inits < a.initiations || more_time);
        if !want_malformed && !want_init {
            break;
        }
        if want_malformed {
            let len = malformed(sent, &mut rng, &mut buf);
            if sock.send_to(&buf[..len], a.to).is_err() {
                errors += 1;
            }
            sent += 1;
        }
        if let Some(raw) = raw.as_ref().filter(|_| want_init) {
            if sent % every == 0 || !want_malformed {
                let n = (inits % u64::from(a.sources)) as u32;
                let src = Ipv4Addr::new(a.spoof[0], a.spoof[1], (n >> 8) as u8, n as u8);
                let sport = 40000 + (n % 1000) as u16;
                initiation(src, a.to, sport, &mut rng, a.mac1_key.as_ref(), &mut pkt);
                let SocketAddr::V4(to) = a.to else {
                    unreachable!()
                };
                if raw.send(&pkt, *to.ip()).is_err() {
                    errors += 1;
                }
                inits += 1;
            }
        }
        if start.elapsed() > Duration::from_secs(120) {
            eprintln!("pd-flood: stopping after 120 s");
            break;
        }
    }
    println!(
        "malformed={sent} initiations={inits} errors={errors} seconds={:.2}",
        start.elapsed().as_secs_f64()
    );
    std::process::ExitCode::SUCCESS
}
