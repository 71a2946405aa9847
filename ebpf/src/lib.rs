//! portdistrict's eBPF layer on the underlay: the XDP program that guards the
//! WireGuard listen ports (src/bpf/pd_xdp.c, compiled by build.rs with clang), the
//! types it shares with userspace ([`abi`], layouts pinned by tests), its loader
//! ([`XdpProgram`]: maps, attachment, counters, `BPF_PROG_TEST_RUN`) and the AF_XDP
//! sockets that the steer mode feeds ([`xsk`]).
//!
//! What the program does with UDP to a listen port: it passes only well-formed
//! WireGuard (type 1 with 148 bytes, type 2 with 92, type 3 with 64, type 4 with at
//! least 32 and a length the padding rules allow: a plaintext that is empty, a
//! multiple of 16, or at least an IPv4 header long, since boringtun and gotatun do
//! not pad; reserved bytes zero), and for types
//! 2, 3 and 4 only when the receiver index is one the dataplane holds; under load
//! (the dataplane's flag) initiations must also pass a per-source token bucket; in
//! steer mode data messages go to the AF_XDP sockets. Everything else aimed at the
//! port is dropped and counted by reason; other traffic passes untouched.
//!
//! The same filter is also in the object as a tc classifier (`pd_tc`), which the
//! loader attaches at tc ingress where generic XDP would cost a copy of every
//! nonlinear skb (veth); it never redirects.

pub mod abi;
mod program;
pub mod xsk;

pub use abi::{Config, Counter};
pub use program::{AttachMode, Attachment, XdpError, XdpProgram, DEFAULT_BURST, DEFAULT_RATE};

/// The compiled XDP object.
pub const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pd_xdp.o"));
