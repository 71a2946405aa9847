/* Types shared between the XDP program (pd_xdp.c) and its Rust loader
 * (ebpf/src/abi.rs mirrors them; tests there pin every size and offset). */
#ifndef PD_XDP_H
#define PD_XDP_H

#include <linux/types.h>

/* Most UDP ports the filter guards (the dataplane's IPv4 and IPv6 listen ports). */
#define PD_MAX_PORTS 4

/* pd_xdp_config.flags */
#define PD_FLAG_UNDER_LOAD 1u /* the dataplane answers initiations with cookies */
#define PD_FLAG_STEER 2u      /* redirect data messages to the AF_XDP sockets */

/* The one entry of PD_CONFIG. */
struct pd_xdp_config {
	__u16 ports[PD_MAX_PORTS]; /* listen ports in host order; 0 = unused */
	__u32 flags;
	__u32 rate;  /* handshake initiations per second per source, under load */
	__u32 burst; /* initiations a source may send at once, under load */
	__u32 steer_max_len; /* steer only data messages of at most this many bytes */
};

/* Queues per interface in PD_XSKS: the socket of queue q of the interface in slot s
 * (PD_IFSLOTS) is at s * PD_QUEUES_PER_IF + q. */
#define PD_QUEUES_PER_IF 16
#define PD_MAX_XSKS 256

/* PD_BUCKETS key: the source, IPv4 as ::ffff:a.b.c.d, IPv6 as its /64 (the last
 * 8 bytes zero). */
struct pd_source {
	__u8 addr[16];
};

/* PD_BUCKETS value: a token bucket kept in nanoseconds of credit. */
struct pd_bucket {
	__u64 last_ns;
	__u64 credit_ns;
};

/* Indices of PD_COUNTERS (per CPU, one __u64 each). */
enum pd_counter {
	PD_PASS_INITIATION = 0,
	PD_PASS_RESPONSE,
	PD_PASS_COOKIE,
	PD_PASS_DATA,
	PD_REDIRECT_DATA,
	PD_PASS_FRAGMENT, /* first fragments of well-formed messages, to be reassembled */
	PD_DROP_TRUNCATED,
	PD_DROP_BAD_TYPE,
	PD_DROP_BAD_LENGTH,
	PD_DROP_UNKNOWN_RECEIVER,
	PD_DROP_RATE_LIMITED,
	PD_COUNTERS,
};

#endif
