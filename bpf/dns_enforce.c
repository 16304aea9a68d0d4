/* SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0 */
/* dns_enforce.c: the resolver policy in the kernel (`detector live --audit` or
 * `--enforce`). cgroup sock_addr hooks connect4, connect6, sendmsg4 and
 * sendmsg6 on the cgroup v2 root, loaded only with one of those flags.
 *
 * Why these hooks: they run in the calling task, before a connect() or an
 * unconnected sendto()/sendmsg() leaves the socket, for every process in
 * every network namespace, and their verdict is the syscall's: returning 0
 * makes it fail with EPERM at once (no packet, no timeout). A connected UDP
 * socket (glibc's stub resolver, dig) is judged at connect(); its later
 * send()s carry no address and do not reach the sendmsg hooks.
 *
 * What is refused (DNS_ENFORCE=1) or only reported (DNS_ENFORCE=0, audit):
 *   - port 53, UDP or TCP, to an address outside the approved resolvers;
 *   - TCP 853 (DNS over TLS) and UDP 853 or 784 (DNS over QUIC) to a server
 *     outside the approved resolvers;
 *   - port 443, TCP or UDP, to an address in enf_doh (known DNS-over-HTTPS
 *     endpoints) that is not an approved resolver.
 * Loopback (127.0.0.0/8, ::1: local stubs), unspecified, multicast and
 * broadcast destinations are always allowed. Which port carries what is the
 * enf_ports map; every other destination is allowed without a lookup.
 *
 * The policy is user space's (detector/detect/resolver_policy.py): the
 * approved networks are an LPM trie keyed by (scope, family, address), where
 * scope 0 is the host's policy and a cgroup id is that cgroup's own; enf_cgroups
 * says which cgroups are exempt (CG_EXEMPT: nothing refused) or have resolvers
 * of their own (CG_OWN: the trie under their id replaces the host's). The
 * cgroup is the caller's cgroup v2 group itself (bpf_get_current_cgroup_id),
 * not its ancestors: a container's own group.
 *
 * Each would-be refusal is reported as a struct dns_event record without
 * payload (kind KIND_POLICY_AUDIT or KIND_POLICY_REFUSED) with the caller's
 * owner, once per socket, address and port (enf_seen, LRU); every one is
 * counted (enf_counters). These programs are attached through BPF links
 * (detector/capture/bpflink.py), so they detach when the sensor's process
 * ends, even on SIGKILL: a dead sensor never keeps refusing DNS.
 * Only UAPI structs: struct bpf_sock_addr.
 */
#include <uapi/linux/in.h>
#include "dns_event.h"

#ifndef DNS_ENFORCE
#define DNS_ENFORCE 0 /* 1: refuse (EPERM); 0: audit: report and allow */
#endif

#define KIND_POLICY_AUDIT 3   /* would have been refused (audit) */
#define KIND_POLICY_REFUSED 4 /* refused: the caller got EPERM */

/* enf_ports: destination port (host byte order) -> what it carries */
#define ENF_DNS 1 /* plain DNS, UDP or TCP */
#define ENF_DOT 2 /* DNS over TLS: TCP */
#define ENF_DOQ 4 /* DNS over QUIC: UDP */
#define ENF_DOH 8 /* HTTPS: refused only to a known DoH address */
BPF_HASH(enf_ports, u16, u8, 16);

/* an approved network: prefixlen = 96 + the network's prefix length */
struct policy_key {
    u32 prefixlen;
    u8 scope[8];  /* u64 cgroup id, 0: the host's policy */
    u8 family[4]; /* 4 or 6 in family[0], the rest 0 */
    u8 addr[16];  /* IPv4 in the first 4 bytes */
};
BPF_LPM_TRIE(enf_approved, struct policy_key, u8, 16384);
/* known DoH endpoint addresses (struct addr_key: IPv4 in the first 4 bytes) */
BPF_HASH(enf_doh, struct addr_key, u8, 16384);
#define CG_EXEMPT 1
#define CG_OWN 2
BPF_HASH(enf_cgroups, u64, u8, 4096);
/* one record per socket, address and port (a UDP socket is refused per datagram) */
struct enf_seen_key {
    u64 cookie;
    struct addr_key addr;
    u16 port;
    u16 pad[3];
};
BPF_TABLE("lru_hash", struct enf_seen_key, u8, enf_seen, 16384);
enum enf_counter { E_DECIDED = 0, E_DENIED = 1, E_LOST = 2, E_MAX = 3 };
BPF_PERCPU_ARRAY(enf_counters, u64, E_MAX);

static __always_inline void enf_count(int k)
{
    u64 *v = enf_counters.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
}

/* loopback, unspecified, multicast, broadcast: never a resolver */
static __always_inline int enf_local(u8 fam, u8 *a)
{
    if (fam == 4)
        return a[0] == 127 || a[0] >= 224 || (a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == 0);
    if (a[0] == 0xff)
        return 1;
    u32 x0, x1, x2, x3;
    __builtin_memcpy(&x0, a, 4);
    __builtin_memcpy(&x1, a + 4, 4);
    __builtin_memcpy(&x2, a + 8, 4);
    __builtin_memcpy(&x3, a + 12, 4);
    return x0 == 0 && x1 == 0 && x2 == 0 && (x3 == 0 || x3 == bpf_htonl(1));
}

static __always_inline int enforce(struct bpf_sock_addr *ctx, int family)
{
    u16 port = bpf_ntohs((u16)ctx->user_port);
    u8 *cls = enf_ports.lookup(&port);
    if (!cls)
        return 1;
    u32 proto = ctx->protocol;
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
        return 1;
    u8 c = *cls;
    int doh = 0;
    if (c & ENF_DNS)
        ;
    else if ((c & ENF_DOT) && proto == IPPROTO_TCP)
        ;
    else if ((c & ENF_DOQ) && proto == IPPROTO_UDP)
        ;
    else if (c & ENF_DOH)
        doh = 1;
    else
        return 1;

    /* the destination: IPv4, or IPv6 (an IPv4-mapped one as IPv4) */
    struct addr_key k = {};
    u8 fam = 4;
    if (family == 4) {
        u32 a = ctx->user_ip4;
        __builtin_memcpy(k.a, &a, 4);
    } else {
        u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
        if (a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xFFFF)) {
            __builtin_memcpy(k.a, &a3, 4);
        } else {
            fam = 6;
            __builtin_memcpy(k.a, &a0, 4);
            __builtin_memcpy(k.a + 4, &a1, 4);
            __builtin_memcpy(k.a + 8, &a2, 4);
            __builtin_memcpy(k.a + 12, &a3, 4);
        }
    }
    if (enf_local(fam, k.a))
        return 1;
    if (doh && !enf_doh.lookup(&k))
        return 1;

    u64 cg = bpf_get_current_cgroup_id();
    u64 scope = 0;
    u8 *mode = enf_cgroups.lookup(&cg);
    if (mode) {
        if (*mode == CG_EXEMPT)
            return 1;
        scope = cg;
    }
    struct policy_key pk = {};
    pk.prefixlen = 96 + (fam == 4 ? 32 : 128);
    __builtin_memcpy(pk.scope, &scope, 8);
    pk.family[0] = fam;
    __builtin_memcpy(pk.addr, k.a, 16);
    enf_count(E_DECIDED);
    if (enf_approved.lookup(&pk))
        return 1;

    /* outside the policy */
    enf_count(E_DENIED);
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct enf_seen_key sk = {};
    sk.cookie = cookie;
    __builtin_memcpy(sk.addr.a, k.a, 16);
    sk.port = port;
    if (!enf_seen.lookup(&sk)) {
        struct dns_event *e = events.ringbuf_reserve(DNS_EVENT_HDR);
        if (e) {
            u8 one = 1;
            enf_seen.update(&sk, &one); /* reported: not again for this socket */
            u64 pt = bpf_get_current_pid_tgid();
            u64 ug = bpf_get_current_uid_gid();
            e->ts_ns = bpf_ktime_get_ns();
            e->cookie = cookie;
            e->owner.pid = pt >> 32;
            e->owner.tid = (u32)pt;
            e->owner.uid = (u32)ug;
            e->owner.gid = ug >> 32;
            e->owner.cgroup_id = cg;
            bpf_get_current_comm(&e->owner.comm, sizeof(e->owner.comm));
            __builtin_memset(e->saddr, 0, 16);
            __builtin_memcpy(e->daddr, k.a, 16);
            e->sport = 0;
            e->dport = port;
            e->family = fam;
            e->proto = proto;
            e->dir = DIR_EGRESS;
            e->kind = DNS_ENFORCE ? KIND_POLICY_REFUSED : KIND_POLICY_AUDIT;
            e->len = 0;
            e->caplen = 0;
            e->seq = 0;
            e->tcp_flags = 0;
            e->lo = 0;
            events.ringbuf_submit(e, 0);
        } else {
            enf_count(E_LOST);
        }
    }
    return DNS_ENFORCE ? 0 : 1;
}

int enf_connect4(struct bpf_sock_addr *ctx) { return enforce(ctx, 4); }
int enf_connect6(struct bpf_sock_addr *ctx) { return enforce(ctx, 6); }
int enf_sendmsg4(struct bpf_sock_addr *ctx) { return enforce(ctx, 4); }
int enf_sendmsg6(struct bpf_sock_addr *ctx) { return enforce(ctx, 6); }
