//! The XDP fast path on the underlay (`--xdp off|filter|steer`, or `PD_XDP`): loads
//! portdistrict-ebpf's program, attaches it to every Ethernet interface of the
//! namespace the UDP sockets live in (native where the driver has XDP, generic
//! otherwise; interfaces that appear later are picked up within a second), keeps its
//! maps in step with the device (listen port, receiver indices, the under-load flag)
//! and, in steer mode, opens the AF_XDP sockets that receive data messages. When the
//! program cannot load or attach, the log says why and the dataplane runs without it.
//! The attachments are BPF links of this process: they go when it exits, however it
//! exits.

use portdistrict_ebpf::xsk::{XskSocket, MAX_PAYLOAD};
use portdistrict_ebpf::{AttachMode, Counter, XdpProgram};
use portdistrict_wg::device::Device;
use std::time::{Duration, Instant};

/// What the XDP program does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Not loaded.
    Off,
    /// Drops what is not well-formed WireGuard for us; rate-limits initiations under
    /// load.
    Filter,
    /// `Filter`, and data messages go to AF_XDP sockets instead of the UDP socket.
    Steer,
}

impl XdpMode {
    /// Parses `off`, `filter` or `steer`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(XdpMode::Off),
            "filter" => Ok(XdpMode::Filter),
            "steer" => Ok(XdpMode::Steer),
            other => Err(format!("--xdp {other:?}: expected off, filter or steer")),
        }
    }

    /// `off`, `filter` or `steer`.
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Off => "off",
            XdpMode::Filter => "filter",
            XdpMode::Steer => "steer",
        }
    }
}

/// Frames per AF_XDP socket (each [`portdistrict_ebpf::xsk::FRAME_SIZE`] bytes).
const XSK_FRAMES: u32 = 1024;
/// How often the interfaces of the namespace are looked at again.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// The loaded program and the state kept in step with it.
pub struct Xdp {
    mode: XdpMode,
    prog: XdpProgram,
    tun_ifindex: u32,
    generation: Option<u64>,
    under_load: bool,
    port: u16,
    next_scan: Instant,
    /// Map updates that failed.
    errors: u64,
    /// AF_XDP sockets not yet handed to the driver.
    new_sockets: Vec<(XskSocket, u32)>,
    /// The attachment mode tried first (`PD_XDP_ATTACH`), else [`default_mode`].
    prefer: Option<AttachMode>,
}

impl Xdp {
    /// Loads and attaches the program for `mode` (`None` when off or impossible; the
    /// log says which and why); `prefer` is the attachment mode tried first
    /// (`PD_XDP_ATTACH`), else each interface's default.
    pub fn start(
        mode: XdpMode,
        prefer: Option<AttachMode>,
        tun_name: &str,
        tun_ifindex: u32,
    ) -> Option<Xdp> {
        if mode == XdpMode::Off {
            tracing::info!("{tun_name}: XDP off");
            return None;
        }
        let prog = match XdpProgram::load() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    "{tun_name}: XDP {}: {e}; running without XDP",
                    mode.as_str()
                );
                return None;
            }
        };
        let mut x = Xdp {
            mode,
            prog,
            tun_ifindex,
            generation: None,
            under_load: false,
            port: 0,
            next_scan: Instant::now(),
            errors: 0,
            new_sockets: Vec::new(),
            prefer,
        };
        if mode == XdpMode::Steer {
            // Without a socket on an interface's queue the redirect falls back to
            // the UDP socket, so steering can be on before any socket exists.
            if let Err(e) = x.prog.set_steer(true, MAX_PAYLOAD) {
                tracing::warn!("{tun_name}: XDP steer: {e}; filtering only");
                x.mode = XdpMode::Filter;
            }
        }
        x.scan(tun_name);
        if x.prog.attached().is_empty() {
            tracing::info!(
                "{tun_name}: XDP {}: no Ethernet interface in this namespace yet; looking again every second",
                mode.as_str()
            );
        }
        Some(x)
    }

    /// Attaches to the Ethernet interfaces not yet attached.
    fn scan(&mut self, tun_name: &str) {
        for (ifindex, name) in ethernet_interfaces() {
            if ifindex == self.tun_ifindex
                || self.prog.attached().iter().any(|a| a.ifindex == ifindex)
            {
                continue;
            }
            let prefer = self.prefer.unwrap_or_else(|| {
                if self.mode == XdpMode::Steer {
                    AttachMode::Native
                } else {
                    default_mode(&name)
                }
            });
            match self.prog.attach(ifindex, &name, prefer) {
                Ok(mode) => {
                    tracing::info!(
                        "{tun_name}: XDP {} attached to {name} ({})",
                        self.mode.as_str(),
                        mode.as_str()
                    );
                    if self.mode == XdpMode::Steer && mode == AttachMode::Native {
                        self.open_sockets(ifindex, &name, tun_name);
                    } else if self.mode == XdpMode::Steer {
                        // Generic XDP sees a local GSO send as one super-packet, which
                        // one AF_XDP frame cannot stand for: filter only there.
                        tracing::warn!("{tun_name}: XDP steer needs native XDP; {name} has {} only, so its data stays on the UDP socket", mode.as_str());
                    }
                }
                Err(e) => tracing::warn!("{tun_name}: XDP not on {name}: {e}"),
            }
        }
    }

    /// Opens an AF_XDP socket for every receive queue of `ifindex` (steer mode) and
    /// queues them for [`Xdp::take_new_sockets`].
    fn open_sockets(&mut self, ifindex: u32, name: &str, tun_name: &str) {
        let before = self.new_sockets.len();
        for queue in 0..portdistrict_ebpf::abi::QUEUES_PER_IF {
            let s = match XskSocket::open(ifindex, queue, XSK_FRAMES) {
                Ok(s) => s,
                Err(e) => {
                    if queue == 0 {
                        tracing::warn!("{tun_name}: XDP steer: no AF_XDP socket on {name}: {e}; its data stays on the UDP socket");
                    }
                    break;
                }
            };
            if let Err(e) = self.prog.set_xsk(ifindex, queue, s.fd()) {
                tracing::warn!("{tun_name}: XDP steer: AF_XDP socket on {name} queue {queue}: {e}");
                break;
            }
            self.new_sockets.push((s, ifindex));
        }
        let n = self.new_sockets.len() - before;
        if n > 0 {
            tracing::info!(
                "{tun_name}: XDP steer: data messages of up to {MAX_PAYLOAD} bytes on {name} go to {n} AF_XDP socket(s) (copy mode)"
            );
        }
    }

    /// AF_XDP sockets opened since the last call, with their interface: the driver
    /// polls them from now on.
    pub fn take_new_sockets(&mut self) -> Vec<(XskSocket, u32)> {
        std::mem::take(&mut self.new_sockets)
    }

    /// A receiver index the device just allocated: in the map before the message
    /// that announces it leaves.
    pub fn index_added(&mut self, index: u32) {
        if let Err(e) = self.prog.add_receiver(index) {
            self.errors += 1;
            tracing::debug!("XDP: {e}");
        }
    }

    /// Keeps the maps in step with the device: listen port, released indices, the
    /// under-load flag; attaches to new interfaces every [`SCAN_INTERVAL`].
    pub fn tick(&mut self, now: Instant, device: &Device, port: u16, tun_name: &str) {
        if port != self.port {
            match self.prog.set_ports(&[port]) {
                Ok(()) => self.port = port,
                Err(e) => {
                    self.errors += 1;
                    tracing::warn!("{tun_name}: XDP listen port {port}: {e}");
                }
            }
        }
        let generation = device.index_generation();
        if self.generation != Some(generation) {
            match self.prog.sync_receivers(device.local_indices()) {
                Ok(_) => self.generation = Some(generation),
                Err(e) => {
                    self.errors += 1;
                    tracing::debug!("XDP: {e}");
                }
            }
        }
        let load = device.under_load(now);
        if load != self.under_load {
            match self.prog.set_under_load(load) {
                Ok(()) => {
                    self.under_load = load;
                    tracing::info!(
                        "{tun_name}: XDP: per-source handshake rate limit {}",
                        if load { "on (under load)" } else { "off" }
                    );
                }
                Err(e) => {
                    self.errors += 1;
                    tracing::warn!("{tun_name}: XDP under-load flag: {e}");
                }
            }
        }
        if now >= self.next_scan {
            self.next_scan = now + SCAN_INTERVAL;
            self.scan(tun_name);
        }
    }

    /// `--stats` lines: the mode, the interfaces, the receiver map and every counter.
    pub fn stats(&self, out: &mut crate::metrics::Stats) {
        out.text("xdp", self.mode.as_str().to_owned());
        let ifs: Vec<String> = self
            .prog
            .attached()
            .iter()
            .map(|a| format!("{}:{}", a.name, a.mode.as_str()))
            .collect();
        out.text("xdp_interfaces", ifs.join(","));
        let native = self
            .prog
            .attached()
            .iter()
            .filter(|a| a.mode == AttachMode::Native)
            .count();
        out.count("xdp_native", native as u64);
        out.count("xdp_receivers", self.prog.receiver_count() as u64);
        out.flag("xdp_under_load", self.under_load);
        out.count("xdp_map_errors", self.errors);
        match self.prog.counters() {
            Ok(c) => {
                let mut dropped = 0;
                for (i, counter) in Counter::ALL.iter().enumerate() {
                    out.count(counter.name(), c[i]);
                    if counter.is_drop() {
                        dropped += c[i];
                    }
                }
                out.count("xdp_dropped", dropped);
            }
            Err(e) => tracing::warn!("XDP counters: {e}"),
        }
    }
}

/// The attachment mode tried first on `name`: tc ingress on veth, native XDP
/// elsewhere. Native XDP on a veth makes the kernel take segmentation offload (GSO)
/// away from its peer, so every UDP GSO send of the other end is cut into datagrams
/// in software: a third of the TCP throughput through the tunnel here (pd-bench, one
/// stream, 3.2 instead of 4.7 Gbit/s). Generic XDP first copies every nonlinear skb
/// (each 64 KiB GSO packet from the peer) into a linear one (2.4% of the daemons' CPU
/// in that test); the tc program reads the headers in place.
fn default_mode(name: &str) -> AttachMode {
    if driver_name(name).as_deref() == Some("veth") {
        AttachMode::Tc
    } else {
        AttachMode::Native
    }
}

/// The kernel driver of interface `name` (`ETHTOOL_GDRVINFO`).
fn driver_name(name: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 3;
    // struct ethtool_drvinfo: cmd, then driver[32], ...; 196 bytes in all.
    let mut info = [0u8; 196];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    let mut req = crate::io::ifreq_with_name(name).ok()?;
    req.ifr_ifru.ifru_data = info.as_mut_ptr().cast();
    // SAFETY: a datagram socket for the ioctl, owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is fresh and owned here.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO reads `req` and writes at most
    // sizeof(struct ethtool_drvinfo) = 196 bytes into `info`, which outlives the call.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCETHTOOL,
            &mut req,
        )
    };
    if r != 0 {
        return None;
    }
    let driver = &info[4..36];
    let end = driver.iter().position(|&b| b == 0).unwrap_or(driver.len());
    Some(String::from_utf8_lossy(&driver[..end]).into_owned())
}

/// The Ethernet interfaces of this network namespace (index, name), loopback and
/// other link types left out.
fn ethernet_interfaces() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry (or null
    // on error), freed below with if_freenameindex; names are NUL-terminated.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            if is_ethernet(&name) {
                out.push(((*p).if_index, name));
            }
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

/// Whether `name` has an Ethernet hardware address (ARPHRD_ETHER).
fn is_ethernet(name: &str) -> bool {
    let Ok(mut req) = crate::io::ifreq_with_name(name) else {
        return false;
    };
    if crate::io::ifreq_ioctl(libc::SIOCGIFHWADDR, "ioctl(SIOCGIFHWADDR)", &mut req).is_err() {
        return false;
    }
    // SAFETY: SIOCGIFHWADDR succeeded, so the union holds the hardware address.
    unsafe { req.ifr_ifru.ifru_hwaddr.sa_family == libc::ARPHRD_ETHER }
}
