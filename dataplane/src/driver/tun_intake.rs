//! TUN intake: packets the kernel routed to the interface, to the device (split
//! first when the TUN fd carries a virtio-net header and the read is a TSO/USO
//! super-packet).

use super::sink::{OsIo, TunSplit, TunWrite};
use super::tx::UdpSend;
use crate::io::Tun;
use portdistrict_offload::vnet::VIRTIO_NET_HDR_LEN;
use portdistrict_offload::{split, VirtioNetHdr};
use portdistrict_wg::device::{Device, TUN_HEADROOM, TUN_TAILROOM};
use std::time::Instant;

/// Reads up to `max` TUN packets with `read(2)` until the queue is empty, each to the
/// device (split first when it is a super-packet); true when the interface is gone.
/// The poll loop's TUN reader, and on io_uring the follow-up to each completed read:
/// there the one read in flight has completed and is re-armed only afterwards, so
/// these reads take the packets queued after it, in order.
pub(super) fn drain_tun(
    device: &mut Device,
    buf: &mut [u8],
    tun_split: &mut TunSplit<'_>,
    now: Instant,
    io: &mut OsIo<'_>,
    max: usize,
) -> bool {
    let tun: &Tun = io.tun;
    let vnet = tun_split.vnet;
    for _ in 0..max {
        // Without a virtio-net header the packet is read where it will be sealed:
        // after room for the data header, with room for padding and tag behind.
        let at = if vnet { 0 } else { TUN_HEADROOM };
        let end = buf.len() - TUN_TAILROOM;
        let n = match tun.read(&mut buf[at..end]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if Tun::is_gone(&e) => return true,
            Err(e) => {
                tracing::error!("{}: reading the TUN device failed: {e}", tun.name());
                return true;
            }
        };
        if vnet {
            tun_frame(device, tun_split, now, &buf[..n], io);
        } else {
            device.handle_tun_packet_in_place(now, buf, n, io);
        }
    }
    false
}

/// One TUN read (`frame`) to the device: as is, or with a virtio-net header split
/// into MTU-sized packets first (a TSO/USO super-packet).
pub(super) fn tun_frame<T: TunWrite, U: UdpSend>(
    device: &mut Device,
    tun_split: &mut TunSplit<'_>,
    now: Instant,
    frame: &[u8],
    io: &mut OsIo<'_, T, U>,
) {
    if !tun_split.vnet {
        device.handle_tun_packet(now, frame, io);
        return;
    }
    let segments = &mut *tun_split.segments;
    let split_ok = VirtioNetHdr::parse(frame).and_then(|hdr| {
        segments.clear();
        split(
            &hdr,
            &frame[VIRTIO_NET_HDR_LEN..],
            TUN_HEADROOM,
            TUN_TAILROOM,
            segments,
        )
    });
    if split_ok.is_err() {
        *tun_split.malformed += 1;
        return;
    }
    // Each segment has room for the data header before it and the padding and tag
    // after it: it is sealed where it lies.
    for i in 0..segments.len() {
        let (buf, len) = segments.get_with_room_mut(i);
        device.handle_tun_packet_in_place(now, buf, len, io);
    }
}
