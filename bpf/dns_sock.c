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
 * UDP socket that talks to another port (udp_owners; looked up first, written
 * only when new or another process took the socket over), since dns_skb.c may
 * find DNS in its packets by content. No kprobes, no kernel-internal structs: only the UAPI
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

static __always_inline int record(struct bpf_sock_addr *ctx, int family, int is_connect)
{
    u16 port = bpf_ntohs((u16)ctx->user_port);
    u8 *kind = ports.lookup(&port);
    if (!kind) {
        if (DNS_ANY_PORT && ctx->type == 2 /* SOCK_DGRAM */) {
            u64 cookie = bpf_get_socket_cookie(ctx);
            u32 pid = bpf_get_current_pid_tgid() >> 32;
            struct owner *known = udp_owners.lookup(&cookie);
            if (!known || known->pid != pid) {
                struct owner o = {};
                fill_owner(&o);
                udp_owners.update(&cookie, &o);
            }
        }
        return 1;
    }
    u8 what = *kind;
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct owner o = {};
    fill_owner(&o);
    owners.update(&cookie, &o);
    if ((what & PORT_CONN) && is_connect) {
        /* the fixed part only: a connect carries no payload */
        struct dns_event *e = events.ringbuf_reserve(DNS_EVENT_HDR);
        if (!e) {
            sock_count(C_LOST);
            return 1;
        }
        e->ts_ns = bpf_ktime_get_ns();
        e->cookie = cookie;
        __builtin_memcpy(&e->owner, &o, sizeof(o));
        __builtin_memset(e->saddr, 0, 16);
        __builtin_memset(e->daddr, 0, 16);
        if (family == 4) {
            u32 a = ctx->user_ip4;
            __builtin_memcpy(e->daddr, &a, 4);
        } else {
            u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
            __builtin_memcpy(e->daddr, &a0, 4);
            __builtin_memcpy(e->daddr + 4, &a1, 4);
            __builtin_memcpy(e->daddr + 8, &a2, 4);
            __builtin_memcpy(e->daddr + 12, &a3, 4);
        }
        e->sport = 0;
        e->dport = port;
        e->family = family;
        e->proto = ctx->type == 1 /* SOCK_STREAM */ ? IPPROTO_TCP : IPPROTO_UDP;
        e->dir = DIR_EGRESS;
        e->kind = KIND_CONNECT;
        e->len = 0;
        e->caplen = 0;
        e->seq = 0;
        e->tcp_flags = 0;
        e->lo = 0;
        events.ringbuf_submit(e, 0);
        sock_count(C_SENT);
    }
    return 1;
}

int dns_connect4(struct bpf_sock_addr *ctx) { return record(ctx, 4, 1); }
int dns_connect6(struct bpf_sock_addr *ctx) { return record(ctx, 6, 1); }
int dns_sendmsg4(struct bpf_sock_addr *ctx) { return record(ctx, 4, 0); }
int dns_sendmsg6(struct bpf_sock_addr *ctx) { return record(ctx, 6, 0); }
