/* SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0 */
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
 * Filtering stays in the kernel, so user space sees only what it needs:
 * - packets to or from a port in the ports map (PORT_DNS);
 * - and UDP payloads on any other port that carry a DNS message, recognized by
 *   content (looks_like_dns below; DNS_ANY_PORT, on unless the loader sets it
 *   to 0): DNS on a non-standard port is itself a finding (T1571), and a
 *   tunnel or C2 channel on port 8053 or 5354 must not escape the sensor.
 *   The check is cheap and rejects early: mDNS and LLMNR ports (5353, 5355)
 *   are left out unless listed, then the 12-byte header must be sane (opcode
 *   QUERY, NOTIFY or UPDATE, the Z bit clear, 1..4 questions, bounded record
 *   counts that fit in the payload, no answers in a plain query), and only
 *   then the first question is walked: labels of 1..63 bytes ending in the
 *   root within the payload and DNS_MAX_LABELS labels, a non-zero type and a
 *   known class. Random bytes and other protocols fail the header almost
 *   always. TCP on other ports: a pushed segment (PSH) whose 2-byte length
 *   prefix covers exactly the rest is examined the same way after the prefix
 *   (a query or a short answer written at once); a message spread over
 *   segments is not found. Counted: C_CONTENT_SEEN (examined),
 *   C_CONTENT_DNS (accepted);
 * - no payload (TCP handshakes, ACKs): nothing sent;
 * - a UDP payload shorter than a DNS header (12 bytes): counted (C_SHORT), not sent;
 * - on loopback a packet crosses egress (sender) and ingress (receiver); only
 *   the client's side is kept, so each message is reported once and with the
 *   client's socket owner: a query (to a DNS port) at egress, a response (from
 *   a DNS port) at ingress;
 * - under overload user space sets a shed level (control[0]); UDP messages
 *   whose exchange hash falls below it are counted (C_SAMPLED), not sent. The
 *   hash is symmetric (DNS id, ports, addresses): a query and its response are
 *   kept or shed together, so sampling never makes answered queries look
 *   unanswered. TCP is never sampled (user space reassembles streams).
 * The rest is copied (up to DNS_MAX_PAYLOAD bytes of L4 payload, read with
 * bpf_skb_load_bytes, which also reads non-linear TCP data) into a per-CPU
 * scratch record and written to the ring buffer with its real length
 * (bpf_ringbuf_output): ~200 bytes for a typical message, not 2 KiB.
 * Counters are per-CPU (C_LOST, C_SHORT, C_SAMPLED, C_SENT, C_CONTENT_*). Always returns 1:
 * packets are observed, never dropped.
 */
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include "dns_event.h"

#define LOOPBACK_IFINDEX 1
#define DNS_MAX_LABELS 40  /* labels the content check walks: a longer first name is not taken for DNS */
#define DNS_MIN_QUESTION 5 /* the root name (1 byte), type and class */
#define DNS_MIN_RR 11      /* the root name, type, class, TTL, rdlength */
#define TCP_PSH 0x08
#define PORT_MDNS 5353
#define PORT_LLMNR 5355

/* one record being built, per CPU (too big for the 512-byte BPF stack) */
BPF_PERCPU_ARRAY(scratch, struct dns_event, 1);

static __always_inline void skb_count(int k)
{
    u64 *v = counters.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1); /* per-CPU; atomic because a softirq can nest */
}

/* symmetric in (source, destination): a query and its response hash alike */
static __always_inline u32 exchange_hash(u16 id, u16 sport, u16 dport, const u8 *saddr, const u8 *daddr)
{
    u32 h = id ^ ((u32)(sport ^ dport) << 16);
    u32 a, b;
#pragma unroll
    for (int i = 0; i < 16; i += 4) {
        __builtin_memcpy(&a, saddr + i, 4);
        __builtin_memcpy(&b, daddr + i, 4);
        h ^= a ^ b;
        h *= 0x9E3779B1u;
    }
    return h >> 22; /* 0..1023 */
}

/* Does this UDP payload (plen bytes at off) hold a DNS message? Sets *qr to its
 * QR bit. Cheapest tests first: one 12-byte load and a few compares reject
 * nearly every non-DNS packet; the question is walked only after that. */
static __always_inline int looks_like_dns(struct __sk_buff *skb, u32 off, u32 plen, u8 *qr)
{
    struct { u16 id, flags, qd, an, ns, ar; } h;
    if (plen < DNS_HDR_LEN + DNS_MIN_QUESTION)
        return 0;
    if (bpf_skb_load_bytes(skb, off, &h, sizeof(h)) < 0)
        return 0;
    u16 fl = bpf_ntohs(h.flags);
    u32 qd = bpf_ntohs(h.qd), an = bpf_ntohs(h.an), ns = bpf_ntohs(h.ns), ar = bpf_ntohs(h.ar);
    u8 opcode = (fl >> 11) & 0xF;
    u8 response = fl >> 15;
    if (opcode != 0 && opcode != 4 && opcode != 5) /* QUERY, NOTIFY, UPDATE */
        return 0;
    if (fl & 0x0040) /* the Z bit: always 0 */
        return 0;
    if ((fl & 0xF) > 10) /* rcodes in the header: NOERROR..NOTZONE */
        return 0;
    if (qd < 1 || qd > 4 || an > 256 || ns > 64 || ar > 64)
        return 0;
    if (!response && ((fl & 0xF) || (opcode == 0 && (an || ns)) || ar > 2))
        return 0; /* a query: no rcode, no answers (but UPDATE, NOTIFY), EDNS and a TSIG at most */
    if ((an + ns + ar) * DNS_MIN_RR + qd * DNS_MIN_QUESTION + DNS_HDR_LEN > plen)
        return 0; /* the counts do not fit in the payload */
    u32 pos = DNS_HDR_LEN;
    u32 end = plen < DNS_MAX_PAYLOAD ? plen : DNS_MAX_PAYLOAD;
    u32 nlen = 0;
#pragma unroll
    for (int i = 0; i < DNS_MAX_LABELS; i++) {
        u8 l;
        if (pos >= end || bpf_skb_load_bytes(skb, off + pos, &l, 1) < 0)
            return 0;
        if (l == 0) {
            u16 tc[2];
            if (pos + 5 > end || bpf_skb_load_bytes(skb, off + pos + 1, tc, 4) < 0)
                return 0;
            u16 qtype = bpf_ntohs(tc[0]), qclass = bpf_ntohs(tc[1]) & 0x7FFF; /* without mDNS's QU bit */
            if (qtype == 0 || !(qclass == 1 || qclass == 3 || qclass == 4 || qclass == 254 || qclass == 255))
                return 0;
            *qr = response;
            return 1;
        }
        if (l > 63) /* a compression pointer cannot start the first name; 64..191 are no lengths */
            return 0;
        nlen += l + 1;
        if (nlen > 254)
            return 0;
        pos += l + 1;
    }
    return 0;
}

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
    if (skb->len <= off)
        return 1; /* no payload (TCP handshake, ACKs) */
    u32 plen = skb->len - off;
    u8 query;
    if (is_dns & PORT_DNS) {
        query = kd && (*kd & PORT_DNS);
    } else {
        /* another port: DNS only when its content says so */
        u8 qr = 0;
        u32 at = 0; /* where the message starts in the payload */
        if (!DNS_ANY_PORT || sport == PORT_MDNS || dport == PORT_MDNS || sport == PORT_LLMNR ||
            dport == PORT_LLMNR)
            return 1;
        if (proto == IPPROTO_TCP) {
            /* one whole message in one pushed segment, as a client writes a query:
             * PSH set and the 2-byte length prefix covering the rest exactly */
            u16 ml;
            if (!(flags & TCP_PSH) || plen < 2 + DNS_HDR_LEN + DNS_MIN_QUESTION ||
                bpf_skb_load_bytes(skb, off, &ml, 2) < 0 || (u32)bpf_ntohs(ml) + 2 != plen)
                return 1;
            at = 2;
        }
        skb_count(C_CONTENT_SEEN);
        if (!looks_like_dns(skb, off + at, plen - at, &qr))
            return 1;
        skb_count(C_CONTENT_DNS);
        query = !qr;
    }

    u8 lo = skb->ifindex == LOOPBACK_IFINDEX;
    if (lo) {
        /* the server's side of a loopback exchange: seen on the client's */
        if (query ? dir != DIR_EGRESS : dir != DIR_INGRESS)
            return 1;
    }
    if (proto == IPPROTO_UDP && plen < DNS_HDR_LEN) {
        skb_count(C_SHORT); /* no DNS header: nothing user space could decode */
        return 1;
    }
    u64 cookie = bpf_get_socket_cookie(skb);
    struct owner *o = owners.lookup(&cookie);
    if (!o && !(is_dns & PORT_DNS))
        o = other_owners.lookup(&cookie);

    if (proto == IPPROTO_UDP) {
        int k0 = 0;
        u32 *shed = control.lookup(&k0);
        if (shed && *shed) {
            u16 id = 0;
            bpf_skb_load_bytes(skb, off, &id, 2);
            if (exchange_hash(id, sport, dport, saddr, daddr) < *shed) {
                skb_count(C_SAMPLED);
                return 1;
            }
        }
    }

    int k = 0;
    e = scratch.lookup(&k);
    if (!e)
        return 1;
    e->ts_ns = bpf_ktime_get_ns();
    e->cookie = cookie;
    if (o) {
        __builtin_memcpy(&e->owner, o, sizeof(*o));
    } else {
        __builtin_memset(&e->owner, 0, sizeof(e->owner));
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
    e->lo = lo;
    e->len = plen;
    u32 n = plen < DNS_MAX_PAYLOAD ? plen : DNS_MAX_PAYLOAD; /* plen >= 1 here */
    /* ((n - 1) & (MAX - 1)) + 1 is n, in a form the verifier can bound to [1, MAX] */
    u32 sz = ((n - 1) & (DNS_MAX_PAYLOAD - 1)) + 1;
    if (bpf_skb_load_bytes(skb, off, e->data, sz) < 0)
        sz = 0;
    e->caplen = sz;
    if (events.ringbuf_output(e, DNS_EVENT_HDR + sz, BPF_RB_NO_WAKEUP) < 0)
        skb_count(C_LOST);
    else
        skb_count(C_SENT);
    return 1;
}

int dns_egress(struct __sk_buff *skb) { return handle(skb, DIR_EGRESS); }
int dns_ingress(struct __sk_buff *skb) { return handle(skb, DIR_INGRESS); }
