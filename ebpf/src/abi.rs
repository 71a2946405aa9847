//! The types shared with the XDP program, mirroring src/bpf/pd_xdp.h field for field;
//! the tests pin their sizes and offsets and check the counter list against the
//! header's enum.

/// The most listen ports the program guards.
pub const MAX_PORTS: usize = 4;
/// `Config::flags`: the dataplane answers initiations with cookies.
pub const FLAG_UNDER_LOAD: u32 = 1;
/// `Config::flags`: data messages go to the AF_XDP sockets.
pub const FLAG_STEER: u32 = 2;
/// AF_XDP sockets per interface in the socket map.
pub const QUEUES_PER_IF: u32 = 16;
/// Entries of the socket map.
pub const MAX_XSKS: u32 = 256;

/// `struct pd_xdp_config`, the one entry of `PD_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Listen ports in host order; 0 = unused.
    pub ports: [u16; MAX_PORTS],
    /// [`FLAG_UNDER_LOAD`], [`FLAG_STEER`].
    pub flags: u32,
    /// Handshake initiations per second per source address, under load.
    pub rate: u32,
    /// Initiations a source may send at once, under load.
    pub burst: u32,
    /// Data messages longer than this (UDP payload bytes) stay on the UDP socket in
    /// steer mode.
    pub steer_max_len: u32,
}

// SAFETY: `Config` is `repr(C)`, `Copy`, has no padding (tests pin size and offsets)
// and any bit pattern is a valid value.
unsafe impl aya::Pod for Config {}

/// `struct pd_source`: a source, IPv4 as `::ffff:a.b.c.d`, IPv6 as its /64 (the last
/// 8 bytes zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// The address bytes.
    pub addr: [u8; 16],
}

// SAFETY: a plain byte array.
unsafe impl aya::Pod for Source {}

/// `struct pd_bucket`: a token bucket counted in nanoseconds of credit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// When the bucket was last charged (`bpf_ktime_get_ns`).
    pub last_ns: u64,
    /// Credit left, in nanoseconds (one initiation costs 1e9 / rate).
    pub credit_ns: u64,
}

// SAFETY: `repr(C)`, two `u64`, no padding.
unsafe impl aya::Pod for Bucket {}

/// Per-CPU counters of `PD_COUNTERS_MAP`, in the order of `enum pd_counter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    /// Handshake initiations passed.
    PassInitiation = 0,
    /// Handshake responses passed.
    PassResponse,
    /// Cookie replies passed.
    PassCookie,
    /// Data messages passed to the UDP socket.
    PassData,
    /// Data messages redirected to an AF_XDP socket (steer).
    RedirectData,
    /// First fragments of well-formed messages, passed to the kernel for reassembly
    /// (later fragments pass uncounted: they carry no UDP header).
    PassFragment,
    /// Too short for a UDP header and a message type, or a UDP length beyond the frame.
    DropTruncated,
    /// Unknown message type, or reserved bytes not zero.
    DropBadType,
    /// A length the message type does not allow.
    DropBadLength,
    /// A receiver index the dataplane does not hold.
    DropUnknownReceiver,
    /// An initiation over its source's rate under load.
    DropRateLimited,
}

impl Counter {
    /// Every counter, in map order.
    pub const ALL: [Counter; 11] = [
        Counter::PassInitiation,
        Counter::PassResponse,
        Counter::PassCookie,
        Counter::PassData,
        Counter::RedirectData,
        Counter::PassFragment,
        Counter::DropTruncated,
        Counter::DropBadType,
        Counter::DropBadLength,
        Counter::DropUnknownReceiver,
        Counter::DropRateLimited,
    ];

    /// The name in `--stats` (`xdp_` + the C enumerator in lower case, without `PD_`).
    pub fn name(self) -> &'static str {
        match self {
            Counter::PassInitiation => "xdp_pass_initiation",
            Counter::PassResponse => "xdp_pass_response",
            Counter::PassCookie => "xdp_pass_cookie",
            Counter::PassData => "xdp_pass_data",
            Counter::RedirectData => "xdp_redirect_data",
            Counter::PassFragment => "xdp_pass_fragment",
            Counter::DropTruncated => "xdp_drop_truncated",
            Counter::DropBadType => "xdp_drop_bad_type",
            Counter::DropBadLength => "xdp_drop_bad_length",
            Counter::DropUnknownReceiver => "xdp_drop_unknown_receiver",
            Counter::DropRateLimited => "xdp_drop_rate_limited",
        }
    }

    /// Whether the counter counts dropped packets.
    pub fn is_drop(self) -> bool {
        self.name().starts_with("xdp_drop_")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    const HEADER: &str = include_str!("bpf/pd_xdp.h");

    #[test]
    fn layouts_match_the_c_header() {
        assert_eq!(size_of::<Config>(), 24);
        assert_eq!(offset_of!(Config, ports), 0);
        assert_eq!(offset_of!(Config, flags), 8);
        assert_eq!(offset_of!(Config, rate), 12);
        assert_eq!(offset_of!(Config, burst), 16);
        assert_eq!(offset_of!(Config, steer_max_len), 20);
        assert_eq!(size_of::<Source>(), 16);
        assert_eq!(size_of::<Bucket>(), 16);
        assert_eq!(offset_of!(Bucket, credit_ns), 8);
    }

    /// The C header's field order, constants and counter enum, read from the file.
    #[test]
    fn constants_and_counters_match_the_c_header() {
        let config: Vec<&str> = HEADER
            .split("struct pd_xdp_config {")
            .nth(1)
            .unwrap()
            .split("};")
            .next()
            .unwrap()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("__u"))
            .map(|l| l.split([';', '[']).next().unwrap())
            .map(|l| l.split_whitespace().nth(1).unwrap())
            .collect();
        assert_eq!(config, ["ports", "flags", "rate", "burst", "steer_max_len"]);
        let define = |name: &str| -> u32 {
            let line = HEADER
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap();
            line.split_whitespace()
                .nth(2)
                .unwrap()
                .trim_end_matches('u')
                .parse()
                .unwrap()
        };
        assert_eq!(define("PD_MAX_PORTS") as usize, MAX_PORTS);
        assert_eq!(define("PD_FLAG_UNDER_LOAD"), FLAG_UNDER_LOAD);
        assert_eq!(define("PD_FLAG_STEER"), FLAG_STEER);
        assert_eq!(define("PD_QUEUES_PER_IF"), QUEUES_PER_IF);
        assert_eq!(define("PD_MAX_XSKS"), MAX_XSKS);
        // Comments out, then the enumerators in order.
        let mut uncommented = String::new();
        let mut rest = HEADER;
        while let Some((before, after)) = rest.split_once("/*") {
            uncommented.push_str(before);
            rest = after.split_once("*/").map_or("", |(_, a)| a);
        }
        uncommented.push_str(rest);
        let counters: Vec<String> = uncommented
            .split("enum pd_counter {")
            .nth(1)
            .unwrap()
            .split("};")
            .next()
            .unwrap()
            .split(',')
            .map(|c| c.split('=').next().unwrap().trim().to_string())
            .filter(|c| !c.is_empty() && c != "PD_COUNTERS")
            .collect();
        let ours: Vec<String> = Counter::ALL
            .iter()
            .map(|c| c.name().replace("xdp_", "PD_").to_uppercase())
            .collect();
        assert_eq!(counters, ours);
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
