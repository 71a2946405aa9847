//! [`Handle`]: acknowledged rtnetlink requests and dumps over one blocking socket.
//!
//! Each request carries a fresh sequence number and `NLM_F_ACK`; the handle reads
//! until the `NLMSG_ERROR` answering that number (errno 0 is the acknowledgement), so
//! a failure is the kernel's errno ([`Error::Kernel`]), never text. Dumps collect
//! every message up to `NLMSG_DONE`.

use crate::types::{Address, AddressSpec, Family, Link, Route, Rule, Verb};
use crate::wire::{self, consts, Builder};
use crate::{sys, Error};
use std::fmt::Display;
use std::os::fd::{AsFd, OwnedFd};

/// Receive buffer: a dump datagram or a link message with statistics fits.
const RECV_BUFFER: usize = 64 * 1024;

/// A `NETLINK_ROUTE` socket of the calling thread's network namespace.
#[derive(Debug)]
pub struct Handle {
    fd: OwnedFd,
    seq: u32,
    buf: Box<[u8]>,
}

impl Handle {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Handle, Error> {
        Handle::of(sys::open(false, 0)?)
    }

    fn of(fd: OwnedFd) -> Result<Handle, Error> {
        Ok(Handle {
            fd,
            seq: 0x7064_1000,
            buf: vec![0u8; RECV_BUFFER].into_boxed_slice(),
        })
    }

    /// Deletes every connection-tracking entry of `family` in the calling thread's
    /// network namespace (`conntrack -F`): existing NAT mappings are forgotten and the
    /// next packet of each flow is mapped anew, as after a router's reboot.
    pub fn flush_conntrack(family: Family) -> Result<(), Error> {
        let mut h = Handle::of(sys::open_protocol(libc::NETLINK_NETFILTER, false, 0)?)?;
        h.exchange(
            wire::flush_conntrack(family),
            "IPCTNL_MSG_CT_DELETE",
            &"the conntrack table",
            |_, _| {},
        )
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `msg` and reads answers with its sequence number, handing each non-error
    /// message's (type, payload) to `each`, until the acknowledgement (`ack`), the
    /// first answer (neither), or `NLMSG_DONE` (dump).
    fn exchange(
        &mut self,
        msg: Builder,
        request: &'static str,
        target: &dyn Display,
        mut each: impl FnMut(u16, &[u8]),
    ) -> Result<(), Error> {
        let seq = self.next_seq();
        let bytes = msg.finish(seq);
        let flags = wire::read_u16(&bytes, wire::field::NLMSG_FLAGS);
        let dump = flags & consts::NLM_F_DUMP == consts::NLM_F_DUMP;
        let ack = flags & consts::NLM_F_ACK != 0;
        sys::send(self.fd.as_fd(), &bytes).map_err(|io| Error::Syscall {
            call: "sendto(AF_NETLINK)",
            io,
        })?;
        loop {
            let n = match sys::recv(self.fd.as_fd(), &mut self.buf) {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(io) => {
                    return Err(Error::Syscall {
                        call: "recvfrom(AF_NETLINK)",
                        io,
                    })
                }
            };
            for m in wire::messages(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    consts::NLMSG_ERROR => {
                        let errno =
                            wire::error_code(m.payload).ok_or(Error::Malformed("short error"))?;
                        if errno == 0 {
                            return Ok(());
                        }
                        return Err(Error::Kernel {
                            request,
                            target: target.to_string(),
                            errno,
                        });
                    }
                    consts::NLMSG_DONE => return Ok(()),
                    ty => {
                        each(ty, m.payload);
                        if !dump && !ack {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// The link named `name`.
    pub fn link(&mut self, name: &str) -> Result<Link, Error> {
        if name.is_empty() || name.len() >= 16 || name.contains('\0') {
            return Err(Error::InvalidName(name.to_owned()));
        }
        let mut found = None;
        let got = self.exchange(wire::getlink_by_name(name), "RTM_GETLINK", &name, |_, p| {
            found = wire::parse_link(p)
        });
        match got {
            Err(e) if e.errno() == Some(libc::ENODEV) => Err(Error::NoSuchLink(name.to_owned())),
            Err(e) => Err(e),
            Ok(()) => found.ok_or(Error::Malformed("RTM_GETLINK answer")),
        }
    }

    /// The ifindex of `name`.
    pub fn link_index(&mut self, name: &str) -> Result<u32, Error> {
        self.link(name).map(|l| l.index)
    }

    /// Whether a link named `name` exists in this namespace.
    pub fn link_exists(&mut self, name: &str) -> Result<bool, Error> {
        match self.link(name) {
            Ok(_) => Ok(true),
            Err(Error::NoSuchLink(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets link `name` up (`ip link set NAME up`) or down.
    pub fn link_set_up(&mut self, name: &str, up: bool) -> Result<(), Error> {
        let index = self.link_index(name)?;
        self.exchange(
            wire::setlink(index, Some(up), None),
            "RTM_NEWLINK",
            &name,
            |_, _| {},
        )
    }

    /// Sets the MTU of link `name`.
    pub fn link_set_mtu(&mut self, name: &str, mtu: u32) -> Result<(), Error> {
        let index = self.link_index(name)?;
        self.exchange(
            wire::setlink(index, None, Some(mtu)),
            "RTM_NEWLINK",
            &name,
            |_, _| {},
        )
    }

    /// Deletes link `name` (`ip link del NAME`).
    pub fn link_del(&mut self, name: &str) -> Result<(), Error> {
        let index = self.link_index(name)?;
        self.exchange(wire::dellink(index), "RTM_DELLINK", &name, |_, _| {})
    }

    /// Adds, replaces or deletes an address.
    pub fn address(&mut self, verb: Verb, spec: &AddressSpec) -> Result<(), Error> {
        let target = format!("{}/{} ifindex {}", spec.addr, spec.prefix_len, spec.ifindex);
        let request = if verb == Verb::Del {
            "RTM_DELADDR"
        } else {
            "RTM_NEWADDR"
        };
        self.exchange(wire::address(verb, spec), request, &target, |_, _| {})
    }

    /// Every address of this namespace (of `family`, or both).
    pub fn addresses(&mut self, family: Option<Family>) -> Result<Vec<Address>, Error> {
        let mut out = Vec::new();
        self.exchange(
            wire::dump_addresses(family),
            "RTM_GETADDR",
            &"dump",
            |ty, p| {
                if ty == consts::RTM_NEWADDR {
                    out.extend(wire::parse_address(p));
                }
            },
        )?;
        Ok(out)
    }

    /// The addresses of link `name`.
    pub fn link_addresses(&mut self, name: &str) -> Result<Vec<Address>, Error> {
        let index = self.link_index(name)?;
        let mut all = self.addresses(None)?;
        all.retain(|a| a.ifindex == index);
        Ok(all)
    }

    /// Removes every address of link `name` (`ip addr flush dev NAME`); one that went
    /// away meanwhile (a secondary removed with its primary) is no error.
    pub fn address_flush(&mut self, name: &str) -> Result<(), Error> {
        for a in self.link_addresses(name)? {
            let spec = AddressSpec {
                ifindex: a.ifindex,
                addr: a.local,
                prefix_len: a.prefix_len,
                nodad: false,
                deprecated: false,
            };
            match self.address(Verb::Del, &spec) {
                Err(e) if e.is_not_found() => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Adds, replaces or deletes a route.
    pub fn route(&mut self, verb: Verb, route: &Route) -> Result<(), Error> {
        let target = format!("{route:?}");
        let request = if verb == Verb::Del {
            "RTM_DELROUTE"
        } else {
            "RTM_NEWROUTE"
        };
        self.exchange(wire::route(verb, route), request, &target, |_, _| {})
    }

    /// Every unicast, blackhole and unreachable route of `family`, all tables.
    pub fn routes(&mut self, family: Family) -> Result<Vec<Route>, Error> {
        let mut out = Vec::new();
        self.exchange(
            wire::dump_routes(family),
            "RTM_GETROUTE",
            &"dump",
            |ty, p| {
                if ty == consts::RTM_NEWROUTE {
                    out.extend(wire::parse_route(p));
                }
            },
        )?;
        Ok(out)
    }

    /// Adds or deletes a rule (rules cannot be replaced: [`Verb::Replace`] adds).
    pub fn rule(&mut self, verb: Verb, rule: &Rule) -> Result<(), Error> {
        let target = format!("{rule:?}");
        let request = if verb == Verb::Del {
            "RTM_DELRULE"
        } else {
            "RTM_NEWRULE"
        };
        self.exchange(wire::rule(verb, rule), request, &target, |_, _| {})
    }

    /// Every rule of `family` that looks a table up.
    pub fn rules(&mut self, family: Family) -> Result<Vec<Rule>, Error> {
        let mut out = Vec::new();
        self.exchange(wire::dump_rules(family), "RTM_GETRULE", &"dump", |ty, p| {
            if ty == consts::RTM_NEWRULE {
                out.extend(wire::parse_rule(p));
            }
        })?;
        Ok(out)
    }
}

#[cfg(test)]
#[path = "handle_tests.rs"]
mod tests;
