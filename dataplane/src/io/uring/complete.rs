//! Completions: each one decoded from its tag and handed to the caller (TUN reads,
//! UDP messages parsed out of their provided buffers, readiness polls), then the
//! buffers recycled and multishots re-armed.

use super::super::msg::{from_sockaddr, read_gro, read_pktinfo};
use super::tag::Tag;
use super::{Completion, IoError, Reactor, SourceAddr};
use io_uring::cqueue;
use io_uring::types::RecvMsgOut;
use std::io;
use std::mem;
use std::net::SocketAddr;

impl Reactor {
    pub(super) fn complete(
        &mut self,
        data: u64,
        res: i32,
        flags: u32,
        f: &mut impl FnMut(Completion<'_>),
    ) -> Result<(), IoError> {
        match Tag::decode(data) {
            Some(Tag::Tun(i)) => self.complete_tun(i, res, f),
            Some(Tag::Udp { family, gen }) => self.complete_udp(family, gen, res, flags, f),
            Some(Tag::Poll(i)) => self.complete_poll(i, res, f),
            Some(Tag::Cancel) | None => Ok(()),
        }
    }

    fn complete_tun(
        &mut self,
        index: u32,
        res: i32,
        f: &mut impl FnMut(Completion<'_>),
    ) -> Result<(), IoError> {
        if index >= u32::from(self.tun_reads) {
            return Ok(());
        }
        if res == 0 {
            return self.arm_tun(index);
        }
        if res > 0 {
            let len = (res as usize).min(self.tun_len);
            // SAFETY: the read into buffer `index` has completed and is re-armed only
            // after the slice is gone (below); the range is inside the pool.
            let buf = unsafe {
                self.tun_pool
                    .slice_mut(index as usize * self.tun_stride, len)
            };
            f(Completion::Tun(buf));
            return self.arm_tun(index);
        }
        match -res {
            libc::EAGAIN | libc::EINTR => self.arm_tun(index),
            libc::ECANCELED => Ok(()),
            _ if self.tun_dead => Ok(()),
            errno => {
                self.tun_dead = true;
                f(Completion::TunError(io::Error::from_raw_os_error(errno)));
                Ok(())
            }
        }
    }

    fn complete_udp(
        &mut self,
        family: usize,
        gen: u32,
        res: i32,
        flags: u32,
        f: &mut impl FnMut(Completion<'_>),
    ) -> Result<(), IoError> {
        let slot = &mut self.udp[family];
        let current = gen == slot.gen;
        let mut result = Ok(());
        if current && !cqueue::more(flags) {
            slot.armed = false;
            match res {
                0.. => slot.rearm = true,
                _ if matches!(
                    -res,
                    libc::ENOBUFS | libc::EINTR | libc::EAGAIN | libc::ECANCELED
                ) =>
                {
                    slot.rearm = true
                }
                _ => {
                    let e = io::Error::from_raw_os_error(-res);
                    result = Err(IoError::syscall("io_uring RECVMSG (UDP)", e));
                }
            }
        }
        if let Some(bid) = cqueue::buffer_select(flags) {
            if current && res >= 0 {
                self.deliver_udp(family, bid, res as usize, f);
            }
            if let Some(ring) = self.udp[family].ring.as_mut() {
                ring.recycle(bid);
            }
        }
        result
    }

    /// Parses provided buffer `bid` of `family` (`len` bytes used) and hands the
    /// datagram to `f`; truncated or unparsable messages are counted and dropped.
    fn deliver_udp(
        &mut self,
        family: usize,
        bid: u16,
        len: usize,
        f: &mut impl FnMut(Completion<'_>),
    ) {
        let slot = &mut self.udp[family];
        let start = slot.payload_offset();
        let Some(ring) = slot.ring.as_mut() else {
            return;
        };
        // SAFETY: `bid` was just handed to us by a completion of this ring's group and
        // is recycled only after this function returns.
        let Some(buf) = (unsafe { ring.buffer(bid) }) else {
            return;
        };
        let len = len.min(buf.len());
        let Some((from, local, segment, payload_len)) = parse_recvmsg(&buf[..len], &slot.msg)
        else {
            self.truncated += 1;
            return;
        };
        let data = &mut buf[start..start + payload_len];
        f(Completion::Udp {
            family,
            data,
            from,
            local,
            segment,
        });
    }

    fn complete_poll(
        &mut self,
        index: u32,
        res: i32,
        f: &mut impl FnMut(Completion<'_>),
    ) -> Result<(), IoError> {
        if index as usize >= self.extra.len() {
            return Ok(());
        }
        match res {
            0.. => {
                f(Completion::Readable(index as usize));
                self.arm_poll(index)
            }
            _ if -res == libc::ECANCELED => Ok(()),
            _ if matches!(-res, libc::EINTR | libc::EAGAIN) => self.arm_poll(index),
            _ => Err(IoError::syscall(
                "io_uring POLL_ADD",
                io::Error::from_raw_os_error(-res),
            )),
        }
    }

    /// Publishes recycled buffers and re-arms ended multishots.
    pub(super) fn after_drain(&mut self) -> Result<(), IoError> {
        for family in 0..2 {
            if let Some(ring) = self.udp[family].ring.as_mut() {
                ring.publish();
            }
            let slot = &mut self.udp[family];
            if mem::take(&mut slot.rearm) && slot.fd.is_some() && !slot.armed {
                self.arm_udp(family)?;
            }
        }
        Ok(())
    }
}

/// The sender, local address, `UDP_GRO` segment size and payload length of a
/// multishot `RECVMSG` result in `buf`; `None` if it is truncated, malformed or not
/// from an IP address.
fn parse_recvmsg(
    buf: &[u8],
    msg: &libc::msghdr,
) -> Option<(SocketAddr, SourceAddr, Option<u16>, usize)> {
    let out = RecvMsgOut::parse(buf, msg).ok()?;
    if out.is_payload_truncated() || out.is_name_data_truncated() {
        return None;
    }
    // SAFETY: `sockaddr_storage` is plain old data; all-zero is a valid value.
    let mut name: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let name_data = out.name_data();
    let name_len = name_data.len().min(mem::size_of_val(&name));
    // SAFETY: copies `name_len` bytes, no more than either side holds, into `name`.
    unsafe {
        std::ptr::copy_nonoverlapping(
            name_data.as_ptr(),
            (&mut name as *mut libc::sockaddr_storage).cast::<u8>(),
            name_len,
        );
    }
    let from = from_sockaddr(&name, name_len as libc::socklen_t)?;
    let control = out.control_data();
    let local = read_pktinfo(control, control.len());
    let payload_len = out.payload_data().len();
    let segment = read_gro(control, control.len()).filter(|s| usize::from(*s) < payload_len);
    Some((from, local, segment, payload_len))
}
