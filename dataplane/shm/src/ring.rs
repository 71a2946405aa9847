//! The command ring: single producer (portdistrictd), single consumer (the dataplane).

use std::sync::atomic::Ordering;

use crate::layout::{CommandEntry, RING_CAPACITY};
use crate::{Region, ShmError};

/// A command for the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start a handshake with this peer now.
    Handshake([u8; 32]),
}

impl Region {
    /// Queues a command (the producer).
    pub fn push_command(&self, c: Command) -> Result<(), ShmError> {
        self.check()?;
        let head = self.ring_head().load(Ordering::Relaxed);
        let tail = self.ring_tail().load(Ordering::Acquire);
        if head.wrapping_sub(tail) >= RING_CAPACITY {
            return Err(ShmError::RingFull);
        }
        let Command::Handshake(key) = c;
        let e = CommandEntry {
            kind: 1,
            _pad: 0,
            public_key: key,
        };
        // SAFETY: the slot is owned by the producer until head moves past it.
        unsafe { std::ptr::write_volatile(self.ring_ptr((head % RING_CAPACITY) as usize), e) };
        self.ring_head()
            .store(head.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Takes the next command (the consumer). A corrupt entry is skipped and reported.
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
        match e.kind {
            1 => Ok(Some(Command::Handshake(e.public_key))),
            k => Err(ShmError::Corrupt(format!("command kind {k}"))),
        }
    }
}
