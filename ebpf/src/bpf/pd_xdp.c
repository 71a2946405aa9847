// SPDX-License-Identifier: GPL-2.0 OR MIT
/* portdistrict's XDP program for the underlay: UDP to the WireGuard listen ports
 * passes only when it is well-formed WireGuard, and (but for initiations) names a
 * receiver index the dataplane holds; under load, initiations pass a per-source
 * token bucket; in steer mode, data messages go to the dataplane's AF_XDP sockets.
 * Everything else is dropped and counted by reason. Traffic to other ports, and
 * everything that is not IPv4/IPv6 UDP, passes untouched. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "pd_xdp.h"

/* WireGuard message sizes (the whitepaper, section 5.4). */
#define WG_INITIATION_LEN 148
#define WG_RESPONSE_LEN 92
#define WG_COOKIE_LEN 64
#define WG_DATA_MIN_LEN 32
/* A data message's plaintext is empty (keepalive) or an IP packet: padded to a
 * multiple of 16 (capped at the sender's MTU) by wireguard-go and the Linux module,
 * not padded at all by boringtun and gotatun. Either way an unaligned plaintext is a
 * whole IP packet, at least an IPv4 header long. */
#define WG_MIN_IP_PACKET 20

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pd_xdp_config);
} PD_CONFIG SEC(".maps");

/* Receiver indices the dataplane holds (handshakes in flight and sessions), as
 * they appear on the wire (little-endian bytes read as a host-order __u32). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} PD_RECEIVERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pd_source);
	__type(value, struct pd_bucket);
} PD_BUCKETS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PD_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} PD_COUNTERS_MAP SEC(".maps");

/* ifindex -> slot of the interface in PD_XSKS (steer mode). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PD_MAX_XSKS / PD_QUEUES_PER_IF);
	__type(key, __u32);
	__type(value, __u32);
} PD_IFSLOTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, PD_MAX_XSKS);
	__type(key, __u32);
	__type(value, __u32);
} PD_XSKS SEC(".maps");

static __always_inline int count(__u32 which, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&PD_COUNTERS_MAP, &which);
	if (c)
		*c += 1;
	return verdict;
}

/* One initiation from `src` against its bucket; 1 when it may pass. */
static __always_inline int bucket_take(struct pd_source *src, const struct pd_xdp_config *cfg)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 rate = cfg->rate ? cfg->rate : 1;
	__u64 cost = 1000000000ull / rate;
	__u64 max = cost * (cfg->burst ? cfg->burst : 1);
	struct pd_bucket *b = bpf_map_lookup_elem(&PD_BUCKETS, src);
	if (!b) {
		struct pd_bucket fresh = { .last_ns = now, .credit_ns = max - cost };
		bpf_map_update_elem(&PD_BUCKETS, src, &fresh, BPF_ANY);
		return 1;
	}
	__u64 credit = b->credit_ns + (now - b->last_ns);
	if (credit > max)
		credit = max;
	b->last_ns = now;
	if (credit < cost) {
		b->credit_ns = credit;
		return 0;
	}
	b->credit_ns = credit - cost;
	return 1;
}

static __always_inline int known_receiver(void *at, void *data_end)
{
	__u32 index;
	if (at + 4 > data_end)
		return 0;
	__builtin_memcpy(&index, at, 4);
	return bpf_map_lookup_elem(&PD_RECEIVERS, &index) != 0;
}

/* What the program decided about one frame. */
enum pd_verdict {
	PD_V_PASS,
	PD_V_DROP,
	/* A data message that steer mode may redirect. */
	PD_V_DATA,
};

/* Judges the frame at `data` (Ethernet header first; `data_end` ends the bytes that
 * can be read) whose whole length is `total` bytes: the same as `data_end - data`
 * in XDP, more for a tc skb whose tail is in fragments. Counts what it decides,
 * except PD_V_DATA (counted by the caller: redirected or passed). */
static __always_inline int judge(void *data, void *data_end, __u32 total)
{
	__u32 zero = 0;
	struct pd_xdp_config *cfg = bpf_map_lookup_elem(&PD_CONFIG, &zero);
	if (!cfg)
		return PD_V_PASS;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return PD_V_PASS;
	__u16 proto = eth->h_proto;
	void *l3 = eth + 1;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if (l3 + 4 > data_end)
			return PD_V_PASS;
		proto = *(__u16 *)(l3 + 2);
		l3 += 4;
	}

	struct pd_source src = {};
	struct udphdr *udp;
	int first_fragment = 0;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_UDP)
			return PD_V_PASS;
		if (ip->ihl < 5)
			return PD_V_PASS;
		udp = l3 + ip->ihl * 4;
		if ((void *)(udp + 1) > data_end)
			return PD_V_PASS;
		/* A later fragment has no UDP header to judge: the kernel holds it
		 * until the first one comes, which is judged below by the length its
		 * UDP header gives for the whole datagram; dropping that one makes
		 * the reassembly fail. */
		if (ip->frag_off & bpf_htons(0x1fff))
			return PD_V_PASS;
		first_fragment = (ip->frag_off & bpf_htons(0x2000)) != 0;
		src.addr[10] = 0xff;
		src.addr[11] = 0xff;
		__builtin_memcpy(&src.addr[12], &ip->saddr, 4);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > data_end)
			return PD_V_PASS;
		__u8 next = ip6->nexthdr;
		void *l4 = ip6 + 1;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
			    next != IPPROTO_DSTOPTS)
				break;
			if (l4 + 2 > data_end)
				return PD_V_PASS;
			next = *(__u8 *)l4;
			l4 += (*(__u8 *)(l4 + 1) + 1) * 8;
		}
		if (next == IPPROTO_FRAGMENT) {
			/* As for IPv4: judge the first fragment, pass the others. */
			if (l4 + 8 > data_end)
				return PD_V_PASS;
			if (*(__u16 *)(l4 + 2) & bpf_htons(0xfff8))
				return PD_V_PASS;
			first_fragment = 1;
			next = *(__u8 *)l4;
			l4 += 8;
		}
		if (next != IPPROTO_UDP)
			return PD_V_PASS;
		udp = l4;
		if ((void *)(udp + 1) > data_end)
			return PD_V_PASS;
		/* Keyed by the /64, as user space's limiter: a host picks any
		 * address of its /64 at will, so a key per /128 is no limit. */
		__builtin_memcpy(src.addr, &ip6->saddr, 8);
	} else {
		return PD_V_PASS;
	}

	int ours = 0;
#pragma unroll
	for (int i = 0; i < PD_MAX_PORTS; i++)
		if (cfg->ports[i] && udp->dest == bpf_htons(cfg->ports[i]))
			ours = 1;
	if (!ours)
		return PD_V_PASS;

	/* From here on the datagram is aimed at WireGuard: pass only what is. */
	__u32 ulen = bpf_ntohs(udp->len);
	__u8 *msg = (__u8 *)(udp + 1);
	__u32 udp_at = (__u32)((void *)udp - data);
	/* A first fragment carries only the start of the datagram. */
	if (ulen < sizeof(*udp) + 4 || (!first_fragment && udp_at + ulen > total))
		return count(PD_DROP_TRUNCATED, PD_V_DROP);
	if ((void *)(msg + 4) > data_end)
		return count(PD_DROP_TRUNCATED, PD_V_DROP);
	__u32 len = ulen - sizeof(*udp);
	if (msg[1] | msg[2] | msg[3])
		return count(PD_DROP_BAD_TYPE, PD_V_DROP);

	switch (msg[0]) {
	case 1:
		if (len != WG_INITIATION_LEN)
			return count(PD_DROP_BAD_LENGTH, PD_V_DROP);
		if ((cfg->flags & PD_FLAG_UNDER_LOAD) && !bucket_take(&src, cfg))
			return count(PD_DROP_RATE_LIMITED, PD_V_DROP);
		return count(first_fragment ? PD_PASS_FRAGMENT : PD_PASS_INITIATION, PD_V_PASS);
	case 2:
		if (len != WG_RESPONSE_LEN)
			return count(PD_DROP_BAD_LENGTH, PD_V_DROP);
		if (!known_receiver(msg + 8, data_end))
			return count(PD_DROP_UNKNOWN_RECEIVER, PD_V_DROP);
		return count(first_fragment ? PD_PASS_FRAGMENT : PD_PASS_RESPONSE, PD_V_PASS);
	case 3:
		if (len != WG_COOKIE_LEN)
			return count(PD_DROP_BAD_LENGTH, PD_V_DROP);
		if (!known_receiver(msg + 4, data_end))
			return count(PD_DROP_UNKNOWN_RECEIVER, PD_V_DROP);
		return count(first_fragment ? PD_PASS_FRAGMENT : PD_PASS_COOKIE, PD_V_PASS);
	case 4: {
		if (len < WG_DATA_MIN_LEN)
			return count(PD_DROP_BAD_LENGTH, PD_V_DROP);
		__u32 plain = len - WG_DATA_MIN_LEN;
		if ((plain & 15) && plain < WG_MIN_IP_PACKET)
			return count(PD_DROP_BAD_LENGTH, PD_V_DROP);
		if (!known_receiver(msg + 4, data_end))
			return count(PD_DROP_UNKNOWN_RECEIVER, PD_V_DROP);
		if (first_fragment)
			return count(PD_PASS_FRAGMENT, PD_V_PASS);
		if ((cfg->flags & PD_FLAG_STEER) && len <= cfg->steer_max_len)
			return PD_V_DATA;
		return count(PD_PASS_DATA, PD_V_PASS);
	}
	default:
		return count(PD_DROP_BAD_TYPE, PD_V_DROP);
	}
}

SEC("xdp")
int pd_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int v = judge(data, data_end, (__u32)(data_end - data));
	if (v == PD_V_DROP)
		return XDP_DROP;
	if (v != PD_V_DATA)
		return XDP_PASS;
	if (ctx->rx_queue_index < PD_QUEUES_PER_IF) {
		__u32 ifindex = ctx->ingress_ifindex;
		__u32 *slot = bpf_map_lookup_elem(&PD_IFSLOTS, &ifindex);
		if (slot) {
			__u32 key = *slot * PD_QUEUES_PER_IF + ctx->rx_queue_index;
			int verdict = bpf_redirect_map(&PD_XSKS, key, XDP_PASS);
			if (verdict == XDP_REDIRECT)
				return count(PD_REDIRECT_DATA, verdict);
		}
	}
	return count(PD_PASS_DATA, XDP_PASS);
}

/* Bytes pulled into the linear part for tc: the headers the judge reads (Ethernet,
 * two VLAN tags, IPv6 with extension headers, UDP, 12 bytes of message). */
#define PD_TC_PULL 256

/* The same filter at tc ingress, for interfaces whose driver has no XDP (veth):
 * generic XDP would first copy every nonlinear skb (a 64 KiB UDP GSO packet from
 * the peer) into one linear buffer; here only the headers are pulled. Steering
 * needs XDP: data messages pass. */
SEC("classifier")
int pd_tc(struct __sk_buff *skb)
{
	__u32 total = skb->len;
	__u32 want = total < PD_TC_PULL ? total : PD_TC_PULL;
	if (skb->data_end - skb->data < want)
		bpf_skb_pull_data(skb, want);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	int v = judge(data, data_end, total);
	if (v == PD_V_DROP)
		return TC_ACT_SHOT;
	if (v == PD_V_DATA)
		count(PD_PASS_DATA, 0);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
