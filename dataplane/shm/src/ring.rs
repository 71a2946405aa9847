//! The command ring: single producer (portdistrictd), single consumer (the dataplane).
//!
//! Each slot is one [`CommandEntry`] of 128 bytes; its `kind` says which
//! [`Command`] it holds and which fields it uses. The consumer checks every field of
//! an entry it pops (a family that does not exist, a zero port, a payload longer than
//! [`MAX_RAW_PAYLOAD`], a field the kind does not use that is not zero): such an
//! entry is consumed and reported as [`ShmError::Corrupt`], never acted upon.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::codec::{decode_endpoint, encode_endpoint};
use crate::layout::{CommandEntry, MAX_RAW_PAYLOAD, RING_CAPACITY};
use crate::{Region, ShmError};

/// `CommandEntry::kind` of each command.
mod kind {
    pub(super) const HANDSHAKE: u32 = 1;
    pub(super) const PROBE: u32 = 2;
    pub(super) const PIN: u32 = 3;
    pub(super) const SEND: u32 = 4;
    pub(super) const HOLD: u32 = 5;
}

/// A command for the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start a handshake with this peer now (at most one initiation per
    /// `REKEY_TIMEOUT`, to the peer's endpoint).
    Handshake([u8; 32]),
    /// Send a fresh handshake initiation for `peer` to `to`, from the dataplane's own
    /// UDP socket, with IP TTL / IPv6 hop limit `ttl` (0: the socket's default). The
    /// peer's endpoint does not change; a response completes the handshake as usual.
    Probe {
        /// The peer.
        peer: [u8; 32],
        /// Where the initiation goes (any address, not necessarily the endpoint).
        to: SocketAddr,
        /// IP TTL or hop limit of this one datagram; 0 = the socket's default.
        ttl: u8,
    },
    /// Pin the peer's endpoint to `to` now: authenticated packets from other
    /// addresses no longer move it (no roaming). `None` unpins (roaming again).
    Pin {
        /// The peer.
        peer: [u8; 32],
        /// The address to pin to, or `None` to unpin.
        to: Option<SocketAddr>,
    },
    /// Send one UDP datagram carrying `payload` to `to` from the dataplane's own
    /// socket (its listen port), with TTL `ttl` (0: the socket's default).
    Send {
        /// The destination.
        to: SocketAddr,
        /// IP TTL or hop limit of this datagram; 0 = the socket's default.
        ttl: u8,
        /// The datagram's bytes.
        payload: RawPayload,
    },
    /// `on`: the dataplane sends no handshake initiation of its own for `peer` (NAT
    /// traversal owns them: only probes go out, so that ordinary retries to an
    /// endpoint that cannot answer do not keep stale NAT state alive); answers to
    /// the peer's initiations still go out. `false`, or a pin to an address, ends it.
    Hold {
        /// The peer.
        peer: [u8; 32],
        /// Held or not.
        on: bool,
    },
}

/// The bytes of a [`Command::Send`]: at most [`MAX_RAW_PAYLOAD`], checked when made.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawPayload {
    len: u8,
    bytes: [u8; MAX_RAW_PAYLOAD],
}

impl RawPayload {
    /// A copy of `bytes`; [`ShmError::PayloadTooLong`] past [`MAX_RAW_PAYLOAD`].
    pub fn new(bytes: &[u8]) -> Result<RawPayload, ShmError> {
        if bytes.len() > MAX_RAW_PAYLOAD {
            return Err(ShmError::PayloadTooLong(bytes.len()));
        }
        let mut p = RawPayload {
            len: bytes.len() as u8,
            bytes: [0; MAX_RAW_PAYLOAD],
        };
        p.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(p)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for RawPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawPayload({:02x?})", self.as_bytes())
    }
}

/// An entry with every field zero.
fn empty(kind: u32) -> CommandEntry {
    CommandEntry {
        kind,
        ttl: 0,
        family: 0,
        port: 0,
        public_key: [0; 32],
        addr: [0; 16],
        payload_len: 0,
        _pad: [0; 6],
        payload: [0; MAX_RAW_PAYLOAD],
    }
}

/// Sets the destination fields; a port 0 cannot be sent to.
fn set_to(e: &mut CommandEntry, to: Option<SocketAddr>) -> Result<(), ShmError> {
    if let Some(a) = to.filter(|a| a.port() == 0) {
        return Err(ShmError::InvalidDestination(a));
    }
    (e.family, e.port, e.addr) = encode_endpoint(to);
    Ok(())
}

fn encode(c: &Command) -> Result<CommandEntry, ShmError> {
    let e = match *c {
        Command::Handshake(key) => CommandEntry {
            public_key: key,
            ..empty(kind::HANDSHAKE)
        },
        Command::Probe { peer, to, ttl } => {
            let mut e = CommandEntry {
                public_key: peer,
                ttl,
                ..empty(kind::PROBE)
            };
            set_to(&mut e, Some(to))?;
            e
        }
        Command::Pin { peer, to } => {
            let mut e = CommandEntry {
                public_key: peer,
                ..empty(kind::PIN)
            };
            set_to(&mut e, to)?;
            e
        }
        Command::Hold { peer, on } => CommandEntry {
            public_key: peer,
            ttl: u8::from(on),
            ..empty(kind::HOLD)
        },
        Command::Send { to, ttl, payload } => {
            let mut e = CommandEntry {
                ttl,
                payload_len: u16::from(payload.len),
                payload: payload.bytes,
                ..empty(kind::SEND)
            };
            set_to(&mut e, Some(to))?;
            e
        }
    };
    Ok(e)
}

fn corrupt(why: String) -> ShmError {
    ShmError::Corrupt(format!("command: {why}"))
}

/// The destination of an entry: `None` only for family 0 with a zero port and
/// address; a set one has a nonzero port.
fn decode_to(e: &CommandEntry) -> Result<Option<SocketAddr>, ShmError> {
    match decode_endpoint(e.family, e.port, e.addr).map_err(|err| corrupt(err.to_string()))? {
        None if e.port != 0 || e.addr != [0; 16] => Err(corrupt("address without a family".into())),
        Some(a) if a.port() == 0 => Err(corrupt(format!("destination port 0 ({a})"))),
        to => Ok(to),
    }
}

/// The destination of a kind that needs one.
fn required_to(e: &CommandEntry) -> Result<SocketAddr, ShmError> {
    decode_to(e)?.ok_or_else(|| corrupt(format!("kind {} without a destination", e.kind)))
}

fn decode(e: &CommandEntry) -> Result<Command, ShmError> {
    let unused = |what: &str, zero: bool| {
        if zero {
            Ok(())
        } else {
            Err(corrupt(format!("kind {} with a {what}", e.kind)))
        }
    };
    unused("nonzero padding", e._pad == [0; 6])?;
    if e.kind != kind::SEND {
        unused(
            "payload",
            e.payload_len == 0 && e.payload == [0; MAX_RAW_PAYLOAD],
        )?;
    }
    match e.kind {
        kind::HANDSHAKE => {
            unused("TTL", e.ttl == 0)?;
            unused("destination", decode_to(e)?.is_none())?;
            Ok(Command::Handshake(e.public_key))
        }
        kind::PROBE => Ok(Command::Probe {
            peer: e.public_key,
            to: required_to(e)?,
            ttl: e.ttl,
        }),
        kind::PIN => {
            unused("TTL", e.ttl == 0)?;
            Ok(Command::Pin {
                peer: e.public_key,
                to: decode_to(e)?,
            })
        }
        kind::HOLD => {
            unused("destination", decode_to(e)?.is_none())?;
            match e.ttl {
                0 | 1 => Ok(Command::Hold {
                    peer: e.public_key,
                    on: e.ttl == 1,
                }),
                t => Err(corrupt(format!("hold flag {t}"))),
            }
        }
        kind::SEND => {
            unused("public key", e.public_key == [0; 32])?;
            let len = usize::from(e.payload_len);
            if len > MAX_RAW_PAYLOAD {
                return Err(corrupt(format!("payload of {len} bytes")));
            }
            unused(
                "payload beyond its length",
                e.payload[len..].iter().all(|b| *b == 0),
            )?;
            Ok(Command::Send {
                to: required_to(e)?,
                ttl: e.ttl,
                payload: RawPayload::new(&e.payload[..len])?,
            })
        }
        k => Err(corrupt(format!("kind {k}"))),
    }
}

impl Region {
    /// Queues a command (the producer). A destination with port 0 is refused
    /// ([`ShmError::InvalidDestination`]); a full ring is [`ShmError::RingFull`].
    pub fn push_command(&self, c: Command) -> Result<(), ShmError> {
        let e = encode(&c)?;
        self.check()?;
        let head = self.ring_head().load(Ordering::Relaxed);
        let tail = self.ring_tail().load(Ordering::Acquire);
        if head.wrapping_sub(tail) >= RING_CAPACITY {
            return Err(ShmError::RingFull);
        }
        // SAFETY: the slot is owned by the producer until head moves past it.
        unsafe { std::ptr::write_volatile(self.ring_ptr((head % RING_CAPACITY) as usize), e) };
        self.ring_head()
            .store(head.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Takes the next command (the consumer). A corrupt entry is consumed and
    /// reported ([`ShmError::Corrupt`]); the next call reads the one after it.
    pub fn pop_command(&self) -> Result<Option<Command>, ShmError> {
        self.check()?;
        let tail = self.ring_tail().load(Ordering::Relaxed);
        let head = self.ring_head().load(Ordering::Acquire);
        if head == tail {
            return Ok(None);
        }
        if head.wrapping_sub(tail) > RING_CAPACITY {
            // A producer that wrote nonsense: drop everything queued.
            self.ring_tail().store(head, Ordering::Release);
            return Err(ShmError::Corrupt(format!("ring head {head} tail {tail}")));
        }
        // SAFETY: the slot between tail and head was published by the producer
        // (Acquire on head) and is ours until tail moves past it.
        let e = unsafe { std::ptr::read_volatile(self.ring_ptr((tail % RING_CAPACITY) as usize)) };
        self.ring_tail()
            .store(tail.wrapping_add(1), Ordering::Release);
        decode(&e).map(Some)
    }
}

#[cfg(test)]
pub(crate) fn encode_for_test(c: &Command) -> CommandEntry {
    encode(c).expect("a valid command")
}
