//! The TUN offload path: bytes -> virtio-net header -> split -> push every
//! segment into the GRO coalescer -> flush. Nothing may panic, and since split
//! produces consistent segments, every flushed item must split back into
//! exactly the segments that were pushed, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portdistrict_offload::vnet::{VirtioNetHdr, GSO_NONE, VIRTIO_NET_HDR_LEN};
use portdistrict_offload::{split, Coalescer, Segments};

const MAX_SEGMENTS: usize = 1024;
const HEADROOM: usize = 16;
const TAILROOM: usize = 31;

fn segments() -> Segments {
    Segments::with_capacity(
        MAX_SEGMENTS * (60 + 60 + HEADROOM + TAILROOM) + 65536,
        MAX_SEGMENTS,
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(hdr) = VirtioNetHdr::parse(data) else {
        return;
    };
    let packet = &data[VIRTIO_NET_HDR_LEN..];
    let mut segs = segments();
    let mut gro = Coalescer::new();
    if split(&hdr, packet, HEADROOM, TAILROOM, &mut segs).is_err() {
        // Still exercise the coalescer on the raw bytes and on its halves.
        gro.push(packet);
        let (a, b) = packet.split_at(packet.len() / 2);
        gro.push(a);
        gro.push(b);
        gro.flush(|item| assert!(item.len() >= VIRTIO_NET_HDR_LEN));
        return;
    }
    for seg in segs.iter() {
        gro.push(seg);
    }
    assert!(gro.pending() <= segs.len());
    let mut again = segments();
    let mut back: Vec<Vec<u8>> = Vec::new();
    gro.flush(|item| {
        let item_hdr = VirtioNetHdr::parse(item).expect("flushed items carry a header");
        let body = &item[VIRTIO_NET_HDR_LEN..];
        if item_hdr.gso_type == GSO_NONE {
            assert_eq!(item_hdr, VirtioNetHdr::default());
            back.push(body.to_vec());
            return;
        }
        split(&item_hdr, body, 0, 0, &mut again).expect("a merged item splits again");
        back.extend(again.iter().map(<[u8]>::to_vec));
    });
    let pushed: Vec<Vec<u8>> = segs.iter().map(<[u8]>::to_vec).collect();
    assert_eq!(back, pushed);
});
