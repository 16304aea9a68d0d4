/* dns_event.h: the records bpf/ sends to user space, declared once.
 * detector/capture/live.py mirrors struct dns_event field by field (ctypes). */
#ifndef DNS_EVENT_H
#define DNS_EVENT_H

#define DNS_MAX_PAYLOAD 2048 /* bytes of L4 payload copied per packet (a power of 2: see dns_skb.c) */
#define TASK_COMM_LEN 16

enum dns_kind { KIND_PACKET = 0, KIND_CONNECT = 1 };
enum dns_dir { DIR_EGRESS = 0, DIR_INGRESS = 1 };

/* who owns a socket, recorded at connect()/sendmsg() time (dns_sock.c) */
struct owner {
    u32 pid;        /* tgid */
    u32 tid;
    u32 uid;
    u32 gid;
    u64 cgroup_id;
    char comm[TASK_COMM_LEN];
};

struct dns_event {
    u64 ts_ns;      /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u64 cookie;     /* socket cookie, joins packets to their owner */
    u64 cgroup_id;
    u32 pid;        /* 0 when the socket's owner is unknown */
    u32 tid;
    u32 uid;
    u32 gid;
    char comm[TASK_COMM_LEN];
    u8 saddr[16];   /* IPv4 in the first 4 bytes */
    u8 daddr[16];
    u16 sport;      /* host byte order */
    u16 dport;
    u8 family;      /* 4 or 6 */
    u8 proto;       /* IPPROTO_UDP or IPPROTO_TCP */
    u8 dir;         /* enum dns_dir */
    u8 kind;        /* enum dns_kind */
    u32 seq;        /* TCP sequence number */
    u8 tcp_flags;
    u8 pad[3];
    u32 len;        /* L4 payload length on the wire */
    u32 caplen;     /* bytes copied into data */
    u8 data[DNS_MAX_PAYLOAD];
};

#endif
