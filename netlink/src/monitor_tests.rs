//! Tests of the link monitor: parsing golden messages, and a real dummy link in a
//! fresh network namespace (root only).

use super::*;
use crate::testutil::{in_fresh_netns, ip};
use crate::wire::{align4, consts::IFLA_MTU};
use crate::Handle;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// An `RTM_NEWLINK`/`RTM_DELLINK` message: header, ifinfomsg, then `attrs` (type, payload).
fn link_msg(ty: u16, ifindex: u32, flags: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = vec![0u8; field::IFINFO_LEN];
    body[field::IFINFO_INDEX].copy_from_slice(&ifindex.to_ne_bytes());
    body[field::IFINFO_FLAGS].copy_from_slice(&flags.to_ne_bytes());
    for (attr_ty, payload) in attrs {
        let len = (field::RTA_HDR_LEN + payload.len()) as u16;
        body.extend_from_slice(&len.to_ne_bytes());
        body.extend_from_slice(&attr_ty.to_ne_bytes());
        body.extend_from_slice(payload);
        body.resize(align4(body.len()), 0);
    }
    let mut msg = vec![0u8; field::NLMSG_HDR_LEN];
    msg[field::NLMSG_LEN]
        .copy_from_slice(&((field::NLMSG_HDR_LEN + body.len()) as u32).to_ne_bytes());
    msg[field::NLMSG_TYPE].copy_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

fn parse(bytes: &[u8], ifindex: u32, state: &mut LinkState) -> Vec<LinkEvent> {
    let mut out = Vec::new();
    parse_messages(bytes, ifindex, state, &mut out);
    out
}

const IFNAME: u16 = 3;

#[test]
fn newlink_reports_mtu_and_up_changes_only() {
    let mut state = LinkState::default();
    let up = libc::IFF_UP as u32;
    let msg = link_msg(
        libc::RTM_NEWLINK,
        7,
        up,
        &[(IFNAME, b"wg0\0"), (IFLA_MTU, &1420u32.to_ne_bytes())],
    );
    assert_eq!(
        parse(&msg, 7, &mut state),
        [LinkEvent::Mtu(1420), LinkEvent::Up]
    );
    assert_eq!(parse(&msg, 7, &mut state), [], "unchanged: no events");
    let msg = link_msg(
        libc::RTM_NEWLINK,
        7,
        0,
        &[(IFLA_MTU, &1280u32.to_ne_bytes())],
    );
    assert_eq!(
        parse(&msg, 7, &mut state),
        [LinkEvent::Mtu(1280), LinkEvent::Down]
    );
}

#[test]
fn other_interfaces_are_ignored() {
    let mut state = LinkState::default();
    let msg = link_msg(
        libc::RTM_NEWLINK,
        8,
        1,
        &[(IFLA_MTU, &9000u32.to_ne_bytes())],
    );
    assert_eq!(parse(&msg, 7, &mut state), []);
    let del = link_msg(libc::RTM_DELLINK, 8, 0, &[]);
    assert_eq!(parse(&del, 7, &mut state), []);
}

#[test]
fn dellink_is_deleted_and_resets_state() {
    let mut state = LinkState::default();
    let new = link_msg(
        libc::RTM_NEWLINK,
        7,
        0,
        &[(IFLA_MTU, &1420u32.to_ne_bytes())],
    );
    let mut both = link_msg(libc::RTM_DELLINK, 7, 0, &[]);
    both.extend_from_slice(&new);
    assert_eq!(
        parse(&both, 7, &mut state),
        [LinkEvent::Deleted, LinkEvent::Mtu(1420), LinkEvent::Down],
        "several messages in one datagram; state starts over after Deleted"
    );
}

#[test]
fn golden_newlink_bytes() {
    // nlmsghdr {len 40, RTM_NEWLINK, flags 0, seq 0, pid 0}, ifinfomsg {AF_UNSPEC,
    // type 0, index 5, flags IFF_UP, change 0}, rtattr {len 8, IFLA_MTU, 1500}.
    let mut golden = Vec::new();
    golden.extend_from_slice(&40u32.to_ne_bytes());
    golden.extend_from_slice(&16u16.to_ne_bytes());
    golden.extend_from_slice(&[0; 10]);
    golden.extend_from_slice(&[0, 0, 0, 0]);
    golden.extend_from_slice(&5u32.to_ne_bytes());
    golden.extend_from_slice(&1u32.to_ne_bytes());
    golden.extend_from_slice(&0u32.to_ne_bytes());
    golden.extend_from_slice(&8u16.to_ne_bytes());
    golden.extend_from_slice(&4u16.to_ne_bytes());
    golden.extend_from_slice(&1500u32.to_ne_bytes());
    assert_eq!(
        golden,
        link_msg(
            libc::RTM_NEWLINK,
            5,
            1,
            &[(IFLA_MTU, &1500u32.to_ne_bytes())]
        )
    );
    let mut state = LinkState::default();
    assert_eq!(
        parse(&golden, 5, &mut state),
        [LinkEvent::Mtu(1500), LinkEvent::Up]
    );
}

#[test]
fn malformed_messages_never_panic() {
    let msg = link_msg(
        libc::RTM_NEWLINK,
        7,
        1,
        &[(IFLA_MTU, &1420u32.to_ne_bytes())],
    );
    for cut in 0..msg.len() {
        let mut state = LinkState::default();
        let _ = parse(&msg[..cut], 7, &mut state);
    }
    // Zero-length attribute, huge header length, attribute running past the end.
    let mut zero_attr = link_msg(libc::RTM_NEWLINK, 7, 1, &[(IFLA_MTU, &[1, 2, 3, 4])]);
    zero_attr[32..34].copy_from_slice(&0u16.to_ne_bytes());
    let mut state = LinkState::default();
    assert_eq!(parse(&zero_attr, 7, &mut state), [LinkEvent::Up]);
    let mut huge = msg.clone();
    huge[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert_eq!(parse(&huge, 7, &mut LinkState::default()), []);
    let mut long_attr = msg.clone();
    long_attr[32..34].copy_from_slice(&200u16.to_ne_bytes());
    assert_eq!(
        parse(&long_attr, 7, &mut LinkState::default()),
        [LinkEvent::Up]
    );
    // A short MTU attribute is not read.
    let short = link_msg(libc::RTM_NEWLINK, 7, 0, &[(IFLA_MTU, &[5, 0])]);
    assert_eq!(
        parse(&short, 7, &mut LinkState::default()),
        [LinkEvent::Down]
    );
}

#[test]
fn failed_query_means_deleted() {
    let mut msg = vec![0u8; field::NLMSG_HDR_LEN];
    msg[field::NLMSG_TYPE].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
    let mut err = (-libc::ENODEV).to_ne_bytes().to_vec();
    err.extend_from_slice(&wire::getlink_by_index(7).finish(QUERY_SEQ)[..field::NLMSG_HDR_LEN]);
    msg.extend_from_slice(&err);
    let len = msg.len() as u32;
    msg[field::NLMSG_LEN].copy_from_slice(&len.to_ne_bytes());
    assert_eq!(
        parse(&msg, 7, &mut LinkState::default()),
        [LinkEvent::Deleted]
    );
    // An error about somebody else's request is not about us.
    msg[field::NLMSG_HDR_LEN + 12..field::NLMSG_HDR_LEN + 16].copy_from_slice(&1u32.to_ne_bytes());
    assert_eq!(parse(&msg, 7, &mut LinkState::default()), []);
}

/// Drains `monitor` until `want` shows up; panics with what was seen after 5 s.
fn wait_for(monitor: &mut LinkMonitor, want: LinkEvent) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let mut set = libc::pollfd {
            fd: monitor.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd that outlives the call.
        unsafe { libc::poll(&mut set, 1, 100) };
        let start = seen.len();
        monitor.drain(&mut seen).unwrap();
        if seen[start..].contains(&want) {
            return;
        }
    }
    panic!("no {want:?} within 5 s; saw {seen:?}");
}

/// Adds a link with no traffic of its own: `dummy` where the kernel has it, else `ifb`
/// or an empty `bridge` (this CI kernel lacks the dummy module).
fn add_plain_link(name: &str) {
    for kind in ["dummy", "ifb"] {
        let added = std::process::Command::new("ip")
            .args(["link", "add", name, "type", kind])
            .output()
            .is_ok_and(|out| out.status.success());
        if added {
            return;
        }
    }
    ip(&["link", "add", name, "type", "bridge"]);
}

#[test]
fn dummy_link_mtu_up_and_deletion() {
    in_fresh_netns(|| {
        let name = format!("pdt{}", std::process::id());
        add_plain_link(&name);
        let mut monitor =
            LinkMonitor::new(Handle::open().unwrap().link_index(&name).unwrap()).unwrap();
        wait_for(&mut monitor, LinkEvent::Mtu(1500));
        ip(&["link", "set", &name, "mtu", "1300"]);
        wait_for(&mut monitor, LinkEvent::Mtu(1300));
        ip(&["link", "set", &name, "up"]);
        wait_for(&mut monitor, LinkEvent::Up);
        ip(&["link", "del", &name]);
        wait_for(&mut monitor, LinkEvent::Deleted);
    });
}

#[test]
fn missing_interface_is_reported_deleted() {
    in_fresh_netns(|| {
        let mut monitor = LinkMonitor::new(4242).unwrap();
        wait_for(&mut monitor, LinkEvent::Deleted);
    });
}
