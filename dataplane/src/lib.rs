//! portdistrict's packet engine: `portdistrict-dataplane IFNAME`.
//!
//! The protocol lives in the sans-IO crate `portdistrict-wg`; this crate adds the
//! operating-system side and the small loop that joins the two:
//!
//! - [`io`]: the TUN device, the UDP sockets (IPv4 and IPv6, sticky source address,
//!   fwmark), and the rtnetlink link monitor (MTU changes, deletion);
//! - [`uapi_server`]: the unix socket `/var/run/wireguard/IFNAME.sock`;
//! - [`metrics`]: the opt-in Prometheus endpoint's view of the event loop's counters;
//! - [`crypto_pool`], [`crypto_jobs`]: the threads that seal and open the messages of
//!   a batch in parallel, and the chunks of one batch they run;
//! - [`driver`]: the event loop: TUN -> WireGuard -> UDP and back, timers, UAPI;
//! - [`signals`]: SIGTERM/SIGINT as an fd (logging is set up by `portdistrict-logging`).

pub mod check;
pub mod crypto_jobs;
pub mod crypto_pool;
pub mod driver;
pub mod io;
pub mod metrics;
pub mod shm_link;
pub mod signals;
pub mod uapi_server;
pub mod xdp;
