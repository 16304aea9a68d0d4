/* dns_skb.c: every DNS packet of the host, both ways. cgroup_skb egress and
 * ingress programs on the cgroup v2 root.
 *
 * Why these hooks: they see the packets of every socket of every process in
 * every network namespace (the probe found 19/19 client kinds, io_uring and
 * pre-connected sockets included), UDP and TCP, IPv4 and IPv6, and give the
 * socket cookie that dns_sock.c keyed the owner by. An AF_PACKET filter
 * misses other namespaces and cannot name the receiver; syscall tracepoints
 * tax every read and write on the host.
 *
 * Filtering stays in the kernel: only packets to or from a port in dns_ports
 * are copied (ports map, PORT_DNS) (up to DNS_MAX_PAYLOAD bytes of L4 payload, read with
 * bpf_skb_load_bytes, which also reads non-linear TCP data). On loopback a
 * packet crosses egress (sender) and ingress (receiver); only the side whose
 * socket has a known owner (the client) is kept, so each message is reported
 * once. Always returns 1: packets are observed, never dropped.
 */
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#define LOOPBACK_IFINDEX 1

static __always_inline int handle(struct __sk_buff *skb, u8 dir)
{
    u8 family, proto;
    u32 l4;
    struct dns_event *e;
    u8 saddr[16] = {}, daddr[16] = {};

    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0)
            return 1;
        if (ip.frag_off & bpf_htons(0x3FFF)) /* fragments: not handled here */
            return 1;
        family = 4;
        proto = ip.protocol;
        l4 = ip.ihl * 4;
        __builtin_memcpy(saddr, &ip.saddr, 4);
        __builtin_memcpy(daddr, &ip.daddr, 4);
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0)
            return 1;
        family = 6;
        proto = ip6.nexthdr; /* extension headers: not followed */
        l4 = sizeof(ip6);
        __builtin_memcpy(saddr, &ip6.saddr, 16);
        __builtin_memcpy(daddr, &ip6.daddr, 16);
    } else {
        return 1;
    }

    u16 sport, dport;
    u32 off, seq = 0;
    u8 flags = 0;
    if (proto == IPPROTO_UDP) {
        struct udphdr uh;
        if (bpf_skb_load_bytes(skb, l4, &uh, sizeof(uh)) < 0)
            return 1;
        sport = bpf_ntohs(uh.source);
        dport = bpf_ntohs(uh.dest);
        off = l4 + sizeof(uh);
    } else if (proto == IPPROTO_TCP) {
        struct tcphdr th;
        if (bpf_skb_load_bytes(skb, l4, &th, sizeof(th)) < 0)
            return 1;
        sport = bpf_ntohs(th.source);
        dport = bpf_ntohs(th.dest);
        off = l4 + th.doff * 4;
        seq = bpf_ntohl(th.seq);
        u8 fl;
        bpf_skb_load_bytes(skb, l4 + 13, &fl, 1);
        flags = fl;
    } else {
        return 1;
    }
    u8 *ks = ports.lookup(&sport);
    u8 *kd = ports.lookup(&dport);
    u8 is_dns = (ks ? *ks : 0) | (kd ? *kd : 0);
    if (!(is_dns & PORT_DNS))
        return 1;
    if (skb->len <= off)
        return 1; /* no payload (TCP handshake, ACKs) */
    u32 plen = skb->len - off;

    u64 cookie = bpf_get_socket_cookie(skb);
    struct owner *o = owners.lookup(&cookie);
    if (!o && skb->ifindex == LOOPBACK_IFINDEX)
        return 1; /* the server's side of a loopback exchange: seen on the client's */

    e = events.ringbuf_reserve(sizeof(struct dns_event));
    if (!e) {
        count_lost();
        return 1;
    }
    e->ts_ns = bpf_ktime_get_ns();
    e->cookie = cookie;
    if (o) {
        e->pid = o->pid;
        e->tid = o->tid;
        e->uid = o->uid;
        e->gid = o->gid;
        e->cgroup_id = o->cgroup_id;
        __builtin_memcpy(e->comm, o->comm, TASK_COMM_LEN);
    } else {
        e->pid = 0;
        e->tid = 0;
        e->uid = 0;
        e->gid = 0;
        e->cgroup_id = 0;
        __builtin_memset(e->comm, 0, TASK_COMM_LEN);
    }
    __builtin_memcpy(e->saddr, saddr, 16);
    __builtin_memcpy(e->daddr, daddr, 16);
    e->sport = sport;
    e->dport = dport;
    e->family = family;
    e->proto = proto;
    e->dir = dir;
    e->kind = KIND_PACKET;
    e->seq = seq;
    e->tcp_flags = flags;
    e->len = plen;
    u32 n = plen < DNS_MAX_PAYLOAD ? plen : DNS_MAX_PAYLOAD; /* plen >= 1 here */
    /* ((n - 1) & (MAX - 1)) + 1 is n, in a form the verifier can bound to [1, MAX] */
    u32 sz = ((n - 1) & (DNS_MAX_PAYLOAD - 1)) + 1;
    e->caplen = bpf_skb_load_bytes(skb, off, e->data, sz) == 0 ? sz : 0;
    events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
    return 1;
}

int dns_egress(struct __sk_buff *skb) { return handle(skb, DIR_EGRESS); }
int dns_ingress(struct __sk_buff *skb) { return handle(skb, DIR_INGRESS); }
