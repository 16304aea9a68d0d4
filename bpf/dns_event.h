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

/* KIND_CONNECT: a connect() to a PORT_CONN port (DoT); KIND_FLAGGED: a connect()
 * or sendmsg() to an address in the flagged map (dns_sock.c) */
enum dns_kind { KIND_PACKET = 0, KIND_CONNECT = 1, KIND_FLAGGED = 2 };
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
    C_FLAGGED = 6,      /* connects and sendmsgs to a flagged address, reported (dns_sock.c) */
    C_MAX = 7,
};

BPF_TABLE("lru_hash", u64, struct owner, owners, 65536);
/* owners of UDP and TCP sockets that talk to other ports (DNS_ANY_PORT): a
 * message found there by content is joined to its process. A map of its own,
 * so ordinary traffic never evicts the owners of DNS-port sockets. */
BPF_TABLE("lru_hash", u64, struct owner, other_owners, 32768);
/* ports to watch, host byte order -> PORT_DNS (DNS: copy packets) and/or
 * PORT_CONN (853 DoT/DoQ: report connects) */
BPF_HASH(ports, u16, u8, 64);
#define PORT_DNS 1
#define PORT_CONN 2
BPF_RINGBUF_OUTPUT(events, RING_PAGES);

/* An IPv4 or IPv6 address as a map key: IPv4 (and IPv4-mapped IPv6) in the
 * first 4 bytes, the rest 0, as in struct dns_event's daddr. */
struct addr_key {
    u8 a[16];
};
/* Addresses that a flagged name (a DGA, tunnel or denylist finding) resolved to,
 * written by user space (detector/detect/flagged_connect.py through live.py):
 * dns_sock.c reports a connect()/sendmsg() to one of them, and nothing else. */
BPF_HASH(flagged, struct addr_key, u8, 8192);
/* each socket reports a flagged address once (a UDP socket would per datagram) */
struct flagged_seen_key {
    u64 cookie;
    struct addr_key addr;
};
BPF_TABLE("lru_hash", struct flagged_seen_key, u8, flagged_seen, 8192);
/* the last connect() to each address, so that user space, which learns an
 * address some milliseconds after the answer crossed, still sees a connect that
 * came before it pushed the address: it reads this once per address it adds.
 * No ring buffer record: ordinary connects cost one map update. 64 bytes. */
struct recent_connect {
    struct owner owner;
    u64 ts_ns;
    u16 port;
    u8 proto;
    u8 family;
    u8 pad[12];
};
BPF_TABLE("lru_hash", struct addr_key, struct recent_connect, recent_connects, 16384);
BPF_PERCPU_ARRAY(counters, u64, C_MAX);
/* control[0]: shed level, 0..1023: UDP messages whose exchange hash falls below it
 * (out of 1024) are not sent. 0 = send everything. Set by user space under overload. */
BPF_ARRAY(control, u32, 1);

#endif
