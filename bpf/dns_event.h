/* SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0 */
/* dns_event.h: what bpf/ shares, declared once: the record sent to user space
 * (struct dns_event), the socket owner (struct owner), the per-CPU counters and
 * the maps both programs use. dns_sock.c and dns_skb.c each include it, so each
 * compiles on its own; loaded together they share the maps.
 * detector/capture/live.py mirrors struct dns_event exactly (_FIELDS there) and
 * checks every record's length against it. */
#ifndef DNS_EVENT_H
#define DNS_EVENT_H

#define DNS_MAX_PAYLOAD 2048 /* bytes of L4 payload copied per packet (a power of 2: see dns_skb.c) */
#define DNS_HDR_LEN 12       /* a UDP payload shorter than a DNS header is no DNS message */
#define TASK_COMM_LEN 16
#define RING_PAGES 8192      /* ring buffer: 32 MiB; records are variable length (~200 bytes) */
#ifndef DNS_ANY_PORT
#define DNS_ANY_PORT 1       /* DNS on any UDP port, recognized by content (the loader may pass -DDNS_ANY_PORT=0) */
#endif

enum dns_kind { KIND_PACKET = 0, KIND_CONNECT = 1 };
enum dns_dir { DIR_EGRESS = 0, DIR_INGRESS = 1 };

/* who owns a socket, recorded at connect()/sendmsg() time (dns_sock.c).
 * 40 bytes; user space caches process details by these bytes. */
struct owner {
    u32 pid;        /* tgid */
    u32 tid;
    u32 uid;
    u32 gid;
    u64 cgroup_id;
    char comm[TASK_COMM_LEN];
};

/* One record in the ring buffer: the fixed part, then caplen bytes of data.
 * Records are variable length (offsetof(data) + caplen): no padding is sent.
 * saddr..dport are followed directly by data, so one copy of those bytes
 * identifies a message (user space drops the second copy of a message that
 * crossed two sockets of this host). No implicit padding anywhere. */
struct dns_event {
    u64 ts_ns;      /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u64 cookie;     /* socket cookie, joins packets to their owner */
    struct owner owner; /* pid 0 when the socket's owner is unknown */
    u32 len;        /* L4 payload length on the wire */
    u16 caplen;     /* bytes copied into data */
    u8 dir;         /* enum dns_dir */
    u8 kind;        /* enum dns_kind */
    u32 seq;        /* TCP sequence number */
    u8 tcp_flags;
    u8 family;      /* 4 or 6 */
    u8 proto;       /* IPPROTO_UDP or IPPROTO_TCP */
    u8 lo;          /* 1: loopback, where each packet is kept on one side only: no copy */
    u8 saddr[16];   /* IPv4 in the first 4 bytes, the rest 0 */
    u8 daddr[16];
    u16 sport;      /* host byte order */
    u16 dport;
    u8 data[DNS_MAX_PAYLOAD];
};

#define DNS_EVENT_HDR __builtin_offsetof(struct dns_event, data)

/* per-CPU counters (BPF_PERCPU_ARRAY, summed by user space) */
enum dns_counter {
    C_LOST = 0,     /* ring buffer full: record dropped */
    C_SHORT = 1,    /* UDP payload shorter than a DNS header: not sent */
    C_SAMPLED = 2,  /* shed by sampling (control[0] > 0): not sent */
    C_SENT = 3,     /* records written to the ring buffer */
    C_CONTENT_SEEN = 4, /* UDP payloads on other ports the content check examined (dns_skb.c) */
    C_CONTENT_DNS = 5,  /* ... and took for DNS: sent like any DNS packet */
    C_MAX = 6,
};

BPF_TABLE("lru_hash", u64, struct owner, owners, 65536);
/* owners of UDP sockets that talk to other ports (DNS_ANY_PORT): a message found
 * there by content is joined to its process. A map of its own, so ordinary UDP
 * traffic never evicts the owners of DNS-port sockets. */
BPF_TABLE("lru_hash", u64, struct owner, udp_owners, 32768);
/* ports to watch, host byte order -> PORT_DNS (DNS: copy packets) and/or
 * PORT_CONN (853 DoT/DoQ: report connects) */
BPF_HASH(ports, u16, u8, 64);
#define PORT_DNS 1
#define PORT_CONN 2
BPF_RINGBUF_OUTPUT(events, RING_PAGES);

BPF_PERCPU_ARRAY(counters, u64, C_MAX);
/* control[0]: shed level, 0..1023: UDP messages whose exchange hash falls below it
 * (out of 1024) are not sent. 0 = send everything. Set by user space under overload. */
BPF_ARRAY(control, u32, 1);

#endif
