//! The loader: loads the object (the XDP program and the same filter as a tc
//! program), owns their maps, attaches to interfaces (native XDP, tc ingress, or
//! generic XDP, each falling back to the next where refused), and runs both on
//! crafted frames through `BPF_PROG_TEST_RUN`.

use crate::abi::{Config, Counter, FLAG_STEER, FLAG_UNDER_LOAD, MAX_PORTS, QUEUES_PER_IF};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, XskMap};
use aya::programs::tc::TcAttachType;
use aya::programs::{SchedClassifier, Xdp, XdpMode};
use aya::Ebpf;
use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// Why loading, attaching or a map update failed.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The kernel refused the object or a program load (verifier, permissions, BTF).
    #[error("loading the XDP program: {0}")]
    Load(String),
    /// A map the object should have is missing or has another type.
    #[error("the XDP object's map {0}: {1}")]
    Map(&'static str, String),
    /// No way of attaching worked.
    #[error("attaching the filter to {name}: {tried}")]
    Attach {
        /// The interface.
        name: String,
        /// Each mode tried and why it failed (`native: ...; generic: ...`).
        tried: String,
    },
    /// A map update failed.
    #[error("updating {0}: {1}")]
    Update(&'static str, String),
    /// A listen-port list the program cannot hold.
    #[error("at most {MAX_PORTS} listen ports can be guarded (got {0})")]
    TooManyPorts(usize),
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("BPF_PROG_TEST_RUN: {0}")]
    TestRun(std::io::Error),
}

/// How the filter runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (native XDP).
    Native,
    /// In the kernel's generic receive path (skb mode), where the driver has no XDP.
    Generic,
    /// The same filter as a tc ingress program (TCX link), for drivers without XDP:
    /// unlike generic XDP it reads a nonlinear skb without copying it linear first.
    Tc,
}

impl AttachMode {
    /// `native`, `generic` or `tc`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Tc => "tc",
        }
    }

    /// What to try after this one when it is refused.
    fn order(self) -> [AttachMode; 2] {
        match self {
            AttachMode::Native => [AttachMode::Native, AttachMode::Generic],
            AttachMode::Generic => [AttachMode::Generic, AttachMode::Native],
            AttachMode::Tc => [AttachMode::Tc, AttachMode::Generic],
        }
    }
}

/// An interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name at attachment time.
    pub name: String,
    /// How it runs there.
    pub mode: AttachMode,
    /// Its slot in the AF_XDP socket map.
    pub slot: u32,
}

/// The loaded program and its maps. Dropping it detaches it from every interface
/// (the attachments are BPF links owned by this process: they also go when the
/// process dies).
pub struct XdpProgram {
    ebpf: Ebpf,
    config: Array<MapData, Config>,
    receivers: BpfHashMap<MapData, u32, u8>,
    counters: PerCpuArray<MapData, u64>,
    ifslots: BpfHashMap<MapData, u32, u32>,
    xsks: XskMap<MapData>,
    current: Config,
    held: HashSet<u32>,
    attached: Vec<Attachment>,
}

const PROGRAM: &str = "pd_xdp";
const TC_PROGRAM: &str = "pd_tc";

/// Handshake initiations per second a source may send under load, and its burst
/// (those of the Linux WireGuard module's rate limiter).
pub const DEFAULT_RATE: u32 = 20;
/// See [`DEFAULT_RATE`].
pub const DEFAULT_BURST: u32 = 5;

impl XdpProgram {
    /// Loads the program (verified by the kernel now) with no ports guarded yet.
    pub fn load() -> Result<Self, XdpError> {
        // No kernel BTF: the program reads only packet bytes and its own maps, so it
        // needs no CO-RE relocation, and parsing vmlinux's BTF would cost the process
        // some 20 MiB of memory.
        let mut ebpf = aya::EbpfLoader::new()
            .btf(None)
            .load(crate::OBJECT)
            .map_err(|e| XdpError::Load(e.to_string()))?;
        let xdp = program(&mut ebpf)?;
        xdp.load().map_err(|e| XdpError::Load(e.to_string()))?;
        let tc = tc_program(&mut ebpf)?;
        tc.load().map_err(|e| XdpError::Load(e.to_string()))?;
        fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, XdpError> {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| XdpError::Map(name, "missing".into()))?;
            T::try_from(map).map_err(|e| XdpError::Map(name, e.to_string()))
        }
        let config = take(&mut ebpf, "PD_CONFIG")?;
        let receivers = take(&mut ebpf, "PD_RECEIVERS")?;
        let counters = take(&mut ebpf, "PD_COUNTERS_MAP")?;
        let ifslots = take(&mut ebpf, "PD_IFSLOTS")?;
        let xsks = take(&mut ebpf, "PD_XSKS")?;
        let mut p = XdpProgram {
            ebpf,
            config,
            receivers,
            counters,
            ifslots,
            xsks,
            current: Config {
                rate: DEFAULT_RATE,
                burst: DEFAULT_BURST,
                ..Config::default()
            },
            held: HashSet::new(),
            attached: Vec::new(),
        };
        p.write_config()?;
        Ok(p)
    }

    fn write_config(&mut self) -> Result<(), XdpError> {
        self.config
            .set(0, self.current, 0)
            .map_err(|e| XdpError::Update("PD_CONFIG", e.to_string()))
    }

    /// The configuration in the kernel.
    pub fn config(&self) -> Config {
        self.current
    }

    /// Guards these UDP listen ports (0 entries ignored).
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<(), XdpError> {
        let ports: Vec<u16> = ports.iter().copied().filter(|&p| p != 0).collect();
        if ports.len() > MAX_PORTS {
            return Err(XdpError::TooManyPorts(ports.len()));
        }
        let mut next = [0u16; MAX_PORTS];
        next[..ports.len()].copy_from_slice(&ports);
        if next != self.current.ports {
            self.current.ports = next;
            self.write_config()?;
        }
        Ok(())
    }

    /// Turns the per-source rate limit of initiations on or off (the dataplane is
    /// under load while it answers with cookies).
    pub fn set_under_load(&mut self, on: bool) -> Result<(), XdpError> {
        self.set_flag(FLAG_UNDER_LOAD, on)
    }

    /// The rate limit under load: `rate` initiations per second per source, `burst`
    /// at once.
    pub fn set_rate(&mut self, rate: u32, burst: u32) -> Result<(), XdpError> {
        self.current.rate = rate.max(1);
        self.current.burst = burst.max(1);
        self.write_config()
    }

    /// Sends data messages of at most `max_len` bytes to the AF_XDP sockets (or not).
    pub fn set_steer(&mut self, on: bool, max_len: u32) -> Result<(), XdpError> {
        self.current.steer_max_len = max_len;
        self.set_flag(FLAG_STEER, on)
    }

    fn set_flag(&mut self, flag: u32, on: bool) -> Result<(), XdpError> {
        let flags = if on {
            self.current.flags | flag
        } else {
            self.current.flags & !flag
        };
        if flags != self.current.flags {
            self.current.flags = flags;
            self.write_config()?;
        }
        Ok(())
    }

    /// Attaches to `ifindex` (named `name`): in `prefer` mode, or where that is
    /// refused in the next ([`AttachMode::Tc`] and native fall back to generic,
    /// generic to native). Attaching twice is a no-op.
    pub fn attach(
        &mut self,
        ifindex: u32,
        name: &str,
        prefer: AttachMode,
    ) -> Result<AttachMode, XdpError> {
        if let Some(a) = self.attached.iter().find(|a| a.ifindex == ifindex) {
            return Ok(a.mode);
        }
        let slot = (0..crate::abi::MAX_XSKS / QUEUES_PER_IF)
            .find(|s| self.attached.iter().all(|a| a.slot != *s))
            .ok_or_else(|| XdpError::Attach {
                name: name.into(),
                tried: "too many interfaces".into(),
            })?;
        let mut tried = Vec::new();
        let mut got = None;
        for mode in prefer.order() {
            let result = match mode {
                AttachMode::Native | AttachMode::Generic => {
                    let flag = if mode == AttachMode::Native {
                        XdpMode::Driver
                    } else {
                        XdpMode::Skb
                    };
                    program(&mut self.ebpf)?
                        .attach_to_if_index(ifindex, flag)
                        .map(drop)
                        .map_err(|e| error_chain(&e))
                }
                AttachMode::Tc => tc_program(&mut self.ebpf)?
                    .attach(name, TcAttachType::Ingress)
                    .map(drop)
                    .map_err(|e| error_chain(&e)),
            };
            match result {
                Ok(()) => {
                    got = Some(mode);
                    break;
                }
                Err(why) => tried.push(format!("{}: {why}", mode.as_str())),
            }
        }
        let Some(mode) = got else {
            return Err(XdpError::Attach {
                name: name.into(),
                tried: tried.join("; "),
            });
        };
        self.attached.push(Attachment {
            ifindex,
            name: name.into(),
            mode,
            slot,
        });
        Ok(mode)
    }

    /// The interfaces the program is attached to.
    pub fn attached(&self) -> &[Attachment] {
        &self.attached
    }

    /// Puts the AF_XDP socket `fd` on `queue` of the attached interface `ifindex`.
    pub fn set_xsk(
        &mut self,
        ifindex: u32,
        queue: u32,
        fd: BorrowedFd<'_>,
    ) -> Result<(), XdpError> {
        let Some(a) = self.attached.iter().find(|a| a.ifindex == ifindex) else {
            return Err(XdpError::Update(
                "PD_XSKS",
                format!("interface {ifindex} is not attached"),
            ));
        };
        if queue >= QUEUES_PER_IF {
            return Err(XdpError::Update(
                "PD_XSKS",
                format!("queue {queue} >= {QUEUES_PER_IF}"),
            ));
        }
        let slot = a.slot;
        self.xsks
            .set(slot * QUEUES_PER_IF + queue, fd.as_raw_fd(), 0)
            .map_err(|e| XdpError::Update("PD_XSKS", e.to_string()))?;
        // Only interfaces with a socket get a slot: the others never redirect.
        self.ifslots
            .insert(ifindex, slot, 0)
            .map_err(|e| XdpError::Update("PD_IFSLOTS", e.to_string()))
    }

    /// Adds a receiver index the dataplane now holds.
    pub fn add_receiver(&mut self, index: u32) -> Result<(), XdpError> {
        if self.held.insert(index) {
            if let Err(e) = self.receivers.insert(index, 1, 0) {
                self.held.remove(&index);
                return Err(XdpError::Update("PD_RECEIVERS", e.to_string()));
            }
        }
        Ok(())
    }

    /// Makes the receiver map hold exactly `held`; returns how many entries were
    /// added and removed.
    pub fn sync_receivers(
        &mut self,
        held: impl Iterator<Item = u32>,
    ) -> Result<(usize, usize), XdpError> {
        let want: HashSet<u32> = held.collect();
        let gone: Vec<u32> = self.held.difference(&want).copied().collect();
        let mut removed = 0;
        for i in gone {
            // A missing entry is fine (the mirror is what matters).
            let _ = self.receivers.remove(&i);
            self.held.remove(&i);
            removed += 1;
        }
        let mut added = 0;
        for i in want {
            if !self.held.contains(&i) {
                self.add_receiver(i)?;
                added += 1;
            }
        }
        Ok((added, removed))
    }

    /// How many receiver indices the map holds.
    pub fn receiver_count(&self) -> usize {
        self.held.len()
    }

    /// Every counter summed over the CPUs, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<[u64; Counter::ALL.len()], XdpError> {
        let mut out = [0u64; Counter::ALL.len()];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = self
                .counters
                .get(&(i as u32), 0)
                .map_err(|e| XdpError::Update("PD_COUNTERS_MAP", e.to_string()))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Runs the program once on `frame` (an Ethernet frame) with
    /// `BPF_PROG_TEST_RUN`, as if it arrived on queue 0; returns the verdict
    /// (`XDP_DROP` = 1, `XDP_PASS` = 2, `XDP_REDIRECT` = 4). Counters and maps are
    /// the real ones.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<u32, XdpError> {
        let xdp = program(&mut self.ebpf)?;
        let fd = xdp
            .fd()
            .map_err(|e| XdpError::Load(e.to_string()))?
            .as_fd()
            .as_raw_fd();
        test_run(fd, frame).map_err(XdpError::TestRun)
    }

    /// Runs the tc program once on `frame` (an Ethernet frame, as a linear skb) with
    /// `BPF_PROG_TEST_RUN`; returns the tc verdict (`TC_ACT_OK` = 0, `TC_ACT_SHOT` =
    /// 2). Counters and maps are the real ones.
    pub fn test_run_tc(&mut self, frame: &[u8]) -> Result<u32, XdpError> {
        let tc = tc_program(&mut self.ebpf)?;
        let fd = tc
            .fd()
            .map_err(|e| XdpError::Load(e.to_string()))?
            .as_fd()
            .as_raw_fd();
        test_run(fd, frame).map_err(XdpError::TestRun)
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    ebpf.program_mut(PROGRAM)
        .ok_or_else(|| XdpError::Load(format!("no program {PROGRAM} in the object")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| XdpError::Load(e.to_string()))
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, XdpError> {
    ebpf.program_mut(TC_PROGRAM)
        .ok_or_else(|| XdpError::Load(format!("no program {TC_PROGRAM} in the object")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| XdpError::Load(e.to_string()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The `test` member of `union bpf_attr` (linux/bpf.h), padded with zeroes to the
/// size the kernel checks.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

fn test_run(prog_fd: i32, frame: &[u8]) -> std::io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr.test` (zeroed beyond the fields set) that
    // lives across the call; `data_in` points at `frame.len()` readable bytes, and no
    // output buffers are given (`data_out`/`ctx_out` null with size 0).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr.retval)
}
