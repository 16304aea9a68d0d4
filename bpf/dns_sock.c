/* SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0 */
/* dns_sock.c: who sends DNS. cgroup sock_addr hooks connect4, connect6,
 * sendmsg4 and sendmsg6 on the cgroup v2 root.
 *
 * Why these hooks: they run in the context of the calling task for every
 * connect() and unconnected sendto()/sendmsg() on the host, whatever the
 * network namespace, io_uring included, at no cost to other syscalls. Here the
 * current pid, tid, uid, gid, comm and cgroup id are right; later, when
 * packets cross the cgroup skb hooks (dns_skb.c), they are not (a response is
 * received in softirq context). So this program records the owner of each
 * socket that talks to a DNS port, keyed by socket cookie, and dns_skb.c
 * joins packets to it. With DNS_ANY_PORT it also records the owner of every
 * UDP or TCP socket that talks to another port (other_owners; looked up first, written
 * only when new or another process took the socket over), since dns_skb.c may
 * find DNS in its packets by content.
 *
 * Connections that follow a flagged answer: user space puts the addresses a
 * flagged name (DGA, tunnel, denylist finding) resolved to in the flagged map;
 * a connect() or sendmsg() to one of them is reported (KIND_FLAGGED, once per
 * socket and address), with its owner. Every other connect() only leaves its
 * owner and time in recent_connects (the last one per address, no record), so
 * user space, which learns an address milliseconds after the answer crossed,
 * still finds a connect that came first. No kprobes, no kernel-internal structs: only the UAPI
 * struct bpf_sock_addr.
 *
 * Every program returns 1 (allow): returning 0 would make connect() and
 * sendmsg() fail with EPERM for the whole host.
 */
#include <uapi/linux/in.h>
#include "dns_event.h"

static __always_inline void sock_count(int k)
{
    u64 *v = counters.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1); /* per-CPU; atomic because a softirq can nest */
}

static __always_inline void fill_owner(struct owner *o)
{
    u64 pt = bpf_get_current_pid_tgid();
    u64 ug = bpf_get_current_uid_gid();
    o->pid = pt >> 32;
    o->tid = (u32)pt;
    o->uid = (u32)ug;
    o->gid = ug >> 32;
    o->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&o->comm, sizeof(o->comm));
}

/* the destination as a map key: IPv4, or IPv6 (an IPv4-mapped one as IPv4) */
static __always_inline u8 dest_key(struct bpf_sock_addr *ctx, int family, struct addr_key *k)
{
    if (family == 4) {
        u32 a = ctx->user_ip4;
        __builtin_memcpy(k->a, &a, 4);
        return 4;
    }
    u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
    if (a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xFFFF)) {
        __builtin_memcpy(k->a, &a3, 4);
        return 4;
    }
    __builtin_memcpy(k->a, &a0, 4);
    __builtin_memcpy(k->a + 4, &a1, 4);
    __builtin_memcpy(k->a + 8, &a2, 4);
    __builtin_memcpy(k->a + 12, &a3, 4);
    return 6;
}

/* a connect record (the fixed part only: no payload) */
static __always_inline void emit_conn(struct bpf_sock_addr *ctx, u8 family, struct addr_key *dst,
                                      u64 cookie, struct owner *o, u16 port, u8 kind)
{
    struct dns_event *e = events.ringbuf_reserve(DNS_EVENT_HDR);
    if (!e) {
        sock_count(C_LOST);
        return;
    }
    e->ts_ns = bpf_ktime_get_ns();
    e->cookie = cookie;
    __builtin_memcpy(&e->owner, o, sizeof(*o));
    __builtin_memset(e->saddr, 0, 16);
    __builtin_memcpy(e->daddr, dst->a, 16);
    e->sport = 0;
    e->dport = port;
    e->family = family;
    e->proto = ctx->type == 1 /* SOCK_STREAM */ ? IPPROTO_TCP : IPPROTO_UDP;
    e->dir = DIR_EGRESS;
    e->kind = kind;
    e->len = 0;
    e->caplen = 0;
    e->seq = 0;
    e->tcp_flags = 0;
    e->lo = 0;
    events.ringbuf_submit(e, 0);
    sock_count(C_SENT);
}

/* A destination that a flagged name resolved to: report it, once per socket.
 * connect() also leaves its last call per address in recent_connects. */
static __always_inline void check_flagged(struct bpf_sock_addr *ctx, int family, u64 cookie, u16 port,
                                          int is_connect)
{
    struct addr_key k = {};
    u8 fam = dest_key(ctx, family, &k);
    if (flagged.lookup(&k)) {
        struct flagged_seen_key sk = {};
        sk.cookie = cookie;
        __builtin_memcpy(sk.addr.a, k.a, 16);
        if (flagged_seen.lookup(&sk))
            return;
        u8 one = 1;
        flagged_seen.update(&sk, &one);
        struct owner o = {};
        fill_owner(&o);
        emit_conn(ctx, fam, &k, cookie, &o, port, KIND_FLAGGED);
        sock_count(C_FLAGGED);
        return;
    }
    if (is_connect) {
        /* in place when the address has an entry: an LRU update allocates a new one
         * (measured: ~0.8 us per connect in place, ~1.6 us with an update). A
         * reader may see a torn entry; it is a hint for one lookup, no more. */
        struct recent_connect *r = recent_connects.lookup(&k);
        struct recent_connect fresh = {};
        if (!r)
            r = &fresh;
        fill_owner(&r->owner);
        r->ts_ns = bpf_ktime_get_ns();
        r->port = port;
        r->proto = ctx->type == 1 ? IPPROTO_TCP : IPPROTO_UDP;
        r->family = fam;
        if (r == &fresh)
            recent_connects.update(&k, &fresh);
    }
}

static __always_inline int record(struct bpf_sock_addr *ctx, int family, int is_connect)
{
    u16 port = bpf_ntohs((u16)ctx->user_port);
    u8 *kind = ports.lookup(&port);
    u64 cookie = bpf_get_socket_cookie(ctx);
    if (!kind) {
        if (DNS_ANY_PORT && (ctx->type == 1 || ctx->type == 2) /* SOCK_STREAM, SOCK_DGRAM */) {
            u32 pid = bpf_get_current_pid_tgid() >> 32;
            struct owner *known = other_owners.lookup(&cookie);
            if (!known || known->pid != pid) {
                struct owner o = {};
                fill_owner(&o);
                other_owners.update(&cookie, &o);
            }
        }
        check_flagged(ctx, family, cookie, port, is_connect);
        return 1;
    }
    u8 what = *kind;
    struct owner o = {};
    fill_owner(&o);
    owners.update(&cookie, &o);
    if ((what & PORT_CONN) && is_connect) {
        struct addr_key k = {};
        u8 fam = dest_key(ctx, family, &k);
        emit_conn(ctx, fam, &k, cookie, &o, port, KIND_CONNECT);
    } else {
        check_flagged(ctx, family, cookie, port, is_connect);
    }
    return 1;
}

int dns_connect4(struct bpf_sock_addr *ctx) { return record(ctx, 4, 1); }
int dns_connect6(struct bpf_sock_addr *ctx) { return record(ctx, 6, 1); }
int dns_sendmsg4(struct bpf_sock_addr *ctx) { return record(ctx, 4, 0); }
int dns_sendmsg6(struct bpf_sock_addr *ctx) { return record(ctx, 6, 0); }
