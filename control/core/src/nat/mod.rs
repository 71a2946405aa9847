//! NAT traversal, the pure parts: how nodes and the facilitator address each other
//! inside their WireGuard tunnel ([`addr`]), the messages they exchange ([`wire`]),
//! the facilitator's decisions ([`facilitator`]) and the relay's ([`relay`]).
//!
//! The facilitator is a WireGuard peer of every node that names it, so it sees the
//! NAT mapping of each node's *dataplane* socket (the endpoint its WireGuard session
//! comes from). Two nodes that each ask to meet the other are told each other's
//! mapped and published endpoints and a window start; when their window fails, two
//! that each ask for a relay get one UDP port each on the facilitator, which forwards
//! their (already encrypted) datagrams verbatim between the two registered sources.
//! See docs/nat-traversal.md.

pub mod addr;
pub mod facilitator;
pub mod path;
pub mod relay;
pub mod wire;
