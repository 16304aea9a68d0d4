/* SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0 */
/* dns_tls.c: DNS over HTTPS (DoH) and over TLS (DoT) in clear text, read where
 * the application hands it to OpenSSL: uprobes on the system libssl.so.3.
 *
 * Hooks (attached by detector/capture/tls.py, `detector live --tls`):
 *   SSL_write, SSL_write_ex   entry saves (ssl, buf); the return copies the
 *                             bytes written (the return value, or *written)
 *   SSL_read, SSL_read_ex     entry saves (ssl, buf); the return copies the
 *                             bytes read into buf
 *   SSL_set_fd                records the connection's socket fd (user space
 *                             finds its addresses in /proc)
 *   SSL_free                  forgets the connection, tells user space
 *
 * Why there: DoH and DoT are encrypted on the wire, so the cgroup_skb hooks of
 * dns_skb.c see only TLS records. The plain text exists in the process, at
 * the library call; a uprobe sees it with the calling thread's identity (pid,
 * tid, uid, comm, cgroup), as the socket hooks do for plain DNS. Both ends are
 * copied at the return, when the byte count is known: a write retried after
 * SSL_ERROR_WANT_WRITE (same buffer) is then copied once, and a read only
 * holds data after it returned.
 *
 * Cheap in the kernel: each connection (pid, SSL pointer) has a verdict
 * (tls_verdict): DNS (copy every call), not DNS (copy nothing), or none yet.
 * The kernel gives "not DNS" itself when the first call is neither an HTTP
 * request or response nor a DoT message (first_call_may_be_dns); otherwise
 * the first TLS_PROBE_CALLS calls are copied until user space tells (an
 * HTTP/1.1 request for application/dns-message or ?dns=, an HTTP/2 DATA frame
 * holding a DNS message, a length-prefixed DNS message). A connection with a
 * verdict "not DNS" costs one hash lookup per call.
 *
 * Self-contained: its own ring buffer, maps and counters, loaded as a BPF
 * object of its own next to dns_sock.c and dns_skb.c. */
#include <uapi/linux/ptrace.h>

#define TLS_MAX_DATA 16384   /* bytes copied per call: one TLS record's plain text at most */
#define TLS_PROBE_CALLS 16   /* calls copied on a connection without a verdict */
#define TLS_RING_PAGES 2048  /* ring buffer: 8 MiB */
#define TLS_COMM_LEN 16

enum tls_dir { TLS_WRITE = 0, TLS_READ = 1, TLS_FREE = 2 };
enum tls_verdict { V_NONE = 0, V_DNS = 1, V_OTHER = 2 };
enum tls_counter {
    T_CALLS = 0,    /* SSL_write/SSL_read calls that returned data */
    T_SENT = 1,     /* records written to the ring buffer */
    T_LOST = 2,     /* ring buffer full: record dropped */
    T_SKIPPED = 3,  /* calls not copied: verdict "not DNS", or past the probe calls */
    T_TRUNCATED = 4,/* calls longer than TLS_MAX_DATA: copied in part */
    T_REJECTED = 5, /* connections whose first call is neither HTTP nor DNS: verdict V_OTHER here */
    T_MAX = 6,
};

/* The same 40 bytes as struct owner in dns_event.h (user space caches by them). */
struct tls_owner {
    u32 pid;
    u32 tid;
    u32 uid;
    u32 gid;
    u64 cgroup_id;
    char comm[TLS_COMM_LEN];
};

/* One record: the fixed part (80 bytes), then caplen bytes of data.
 * detector/capture/tls.py mirrors it (TLS_EVENT) and checks every length. */
struct tls_event {
    u64 ts_ns;      /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u64 ssl;        /* the SSL pointer: joins a connection's writes and reads */
    struct tls_owner owner;
    u32 len;        /* bytes the call wrote or read */
    u16 caplen;     /* bytes copied into data */
    u8 dir;         /* enum tls_dir */
    u8 verdict;     /* enum tls_verdict when the call was made */
    s32 fd;         /* the fd given to SSL_set_fd, -1 when unknown */
    u32 pad;
    u64 conn;       /* this connection's id (an SSL pointer is reused by the next one) */
    u8 data[TLS_MAX_DATA];
};

struct conn_key {
    u64 ssl;
    u32 pid;
    u32 pad;
};
struct conn_state {
    u32 calls;      /* calls copied so far without a verdict */
    s32 fd;
    u64 conn;       /* when the kernel first saw the connection (ns): its id */
};
/* a verdict holds for the connection it was given to: a verdict for a freed SSL
 * arriving after its pointer went to a new connection is ignored */
struct verdict_val {
    u64 conn;
    u8 v;           /* enum tls_verdict */
    u8 pad[7];
};
struct call_args {
    u64 ssl;
    u64 buf;
    u64 count;      /* SSL_*_ex: where the byte count is written; 0 for SSL_write/SSL_read */
};

BPF_TABLE("lru_hash", struct conn_key, struct conn_state, tls_conns, 65536);
/* written by user space: V_DNS or V_OTHER per connection */
BPF_TABLE("lru_hash", struct conn_key, struct verdict_val, tls_verdict, 65536);
/* pid_tgid -> the pending SSL_write / SSL_read (LRU: a thread killed inside a call
 * leaves its entry behind) */
BPF_TABLE("lru_hash", u64, struct call_args, tls_writes, 16384);
BPF_TABLE("lru_hash", u64, struct call_args, tls_reads, 16384);
BPF_PERCPU_ARRAY(tls_scratch, struct tls_event, 1);
BPF_PERCPU_ARRAY(tls_counters, u64, T_MAX);
BPF_RINGBUF_OUTPUT(tls_events, TLS_RING_PAGES);

static __always_inline void count(int c) {
    u64 *v = tls_counters.lookup(&c);
    if (v)
        (*v)++;
}

static __always_inline int save(struct pt_regs *ctx, int dir, int ex) {
    struct call_args a = {};
    u64 id = bpf_get_current_pid_tgid();
    a.ssl = PT_REGS_PARM1(ctx);
    a.buf = PT_REGS_PARM2(ctx);
    a.count = ex ? PT_REGS_PARM4(ctx) : 0;
    if (dir == TLS_WRITE)
        tls_writes.update(&id, &a);
    else
        tls_reads.update(&id, &a);
    return 0;
}

static __always_inline void owner(struct tls_owner *o, u64 id) {
    u64 ug = bpf_get_current_uid_gid();
    o->pid = id >> 32;
    o->tid = (u32)id;
    o->uid = (u32)ug;
    o->gid = ug >> 32;
    o->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(o->comm, sizeof(o->comm));
}

/* The first call of a connection (a client's request, or what a server reads
 * first) can carry DNS when it starts an HTTP request ("POST", "GET ", the
 * HTTP/2 preface "PRI "), a response ("HTTP"), or is DoT: a 2-byte length
 * prefix (alone, or before a message that fits) and a query header (QR clear,
 * opcode QUERY, NOTIFY or UPDATE). Anything else (SMTP, IMAP, a database
 * protocol...) is not looked at again. */
static __always_inline int first_call_may_be_dns(void *buf, u64 n) {
    u8 b[8] = {};
    if (bpf_probe_read_user(b, n < 8 ? n : 8, buf) < 0)
        return 1;  /* unreadable here: let user space judge */
    if ((b[0] == 'P' && b[1] == 'O' && b[2] == 'S' && b[3] == 'T') ||
        (b[0] == 'G' && b[1] == 'E' && b[2] == 'T' && b[3] == ' ') ||
        (b[0] == 'P' && b[1] == 'R' && b[2] == 'I' && b[3] == ' ') ||
        (b[0] == 'H' && b[1] == 'T' && b[2] == 'T' && b[3] == 'P'))
        return 1;
    u32 len = ((u32)b[0] << 8) | b[1];
    if (n == 2)
        return len >= 12;
    u8 op = (b[4] >> 3) & 0xf;
    return n >= 8 && len >= 12 && len + 2 <= n && !(b[4] & 0x80) && (op == 0 || op == 4 || op == 5);
}

static __always_inline int emit(struct pt_regs *ctx, int dir, int ex) {
    u64 id = bpf_get_current_pid_tgid();
    struct call_args *ap = dir == TLS_WRITE ? tls_writes.lookup(&id) : tls_reads.lookup(&id);
    if (!ap)
        return 0;
    struct call_args a = *ap;
    if (dir == TLS_WRITE)
        tls_writes.delete(&id);
    else
        tls_reads.delete(&id);
    int ret = (int)PT_REGS_RC(ctx);  /* an int: the upper half of the register is not defined */
    u64 n = 0;
    if (ex) {
        if (ret != 1 || !a.count)
            return 0;
        bpf_probe_read_user(&n, sizeof(n), (void *)a.count);
    } else {
        if (ret <= 0)
            return 0;
        n = ret;
    }
    if (!n)
        return 0;
    count(T_CALLS);
    struct conn_key k = {};
    k.ssl = a.ssl;
    k.pid = id >> 32;
    struct conn_state *st = tls_conns.lookup(&k);
    if (!st) {
        struct conn_state s = {.calls = 0, .fd = -1, .conn = bpf_ktime_get_ns()};
        tls_conns.update(&k, &s);
        st = tls_conns.lookup(&k);
        if (!st)
            return 0;
    }
    u64 conn = st->conn;
    s32 fd = st->fd;
    u8 verdict = V_NONE;
    struct verdict_val *v = tls_verdict.lookup(&k);
    if (v && v->conn == conn)
        verdict = v->v;
    if (verdict == V_OTHER) {
        count(T_SKIPPED);
        return 0;
    }
    if (verdict == V_NONE) {
        u32 calls = st->calls;
        if (calls >= TLS_PROBE_CALLS) {
            count(T_SKIPPED);
            return 0;
        }
        st->calls = calls + 1;
        if (calls == 0 && !first_call_may_be_dns((void *)a.buf, n)) {
            /* neither HTTP nor DNS: nothing more of this connection is copied */
            struct verdict_val other = {.conn = conn, .v = V_OTHER};
            tls_verdict.update(&k, &other);
            count(T_REJECTED);
            return 0;
        }
    }
    int zero = 0;
    struct tls_event *e = tls_scratch.lookup(&zero);
    if (!e)
        return 0;
    e->ts_ns = bpf_ktime_get_ns();
    e->ssl = a.ssl;
    owner(&e->owner, id);
    e->len = n > 0xffffffff ? 0xffffffff : (u32)n;
    u32 c = n > TLS_MAX_DATA ? TLS_MAX_DATA : (u32)n;
    if (c < n)
        count(T_TRUNCATED);
    e->caplen = c;
    e->dir = dir;
    e->verdict = verdict;
    e->fd = fd;
    e->pad = 0;
    e->conn = conn;
    if (bpf_probe_read_user(e->data, c, (void *)a.buf) < 0)
        return 0;
    u64 size = __builtin_offsetof(struct tls_event, data) + c;
    if (tls_events.ringbuf_output(e, size, BPF_RB_NO_WAKEUP) < 0)  /* user space polls */
        count(T_LOST);
    else
        count(T_SENT);
    return 0;
}

int tls_write_entry(struct pt_regs *ctx) { return save(ctx, TLS_WRITE, 0); }
int tls_write_return(struct pt_regs *ctx) { return emit(ctx, TLS_WRITE, 0); }
int tls_write_ex_entry(struct pt_regs *ctx) { return save(ctx, TLS_WRITE, 1); }
int tls_write_ex_return(struct pt_regs *ctx) { return emit(ctx, TLS_WRITE, 1); }
int tls_read_entry(struct pt_regs *ctx) { return save(ctx, TLS_READ, 0); }
int tls_read_return(struct pt_regs *ctx) { return emit(ctx, TLS_READ, 0); }
int tls_read_ex_entry(struct pt_regs *ctx) { return save(ctx, TLS_READ, 1); }
int tls_read_ex_return(struct pt_regs *ctx) { return emit(ctx, TLS_READ, 1); }

/* SSL_set_fd(ssl, fd): the socket behind the connection (Python's ssl module,
 * most C clients; curl and others that plug in their own BIO do not call it) */
int tls_set_fd(struct pt_regs *ctx) {
    struct conn_key k = {};
    k.ssl = PT_REGS_PARM1(ctx);
    k.pid = bpf_get_current_pid_tgid() >> 32;
    struct conn_state s = {.calls = 0, .fd = (s32)PT_REGS_PARM2(ctx), .conn = bpf_ktime_get_ns()};
    tls_conns.update(&k, &s);
    tls_verdict.delete(&k);  /* a reused SSL pointer starts afresh */
    return 0;
}

/* SSL_free(ssl): the pointer may be reused for another connection; user space
 * drops its state for the connection on the small record sent here */
int tls_free(struct pt_regs *ctx) {
    struct conn_key k = {};
    k.ssl = PT_REGS_PARM1(ctx);
    u64 id = bpf_get_current_pid_tgid();
    k.pid = id >> 32;
    struct conn_state *st = tls_conns.lookup(&k);
    if (!st)
        return 0;
    u64 conn = st->conn;
    tls_conns.delete(&k);
    tls_verdict.delete(&k);
    int zero = 0;
    struct tls_event *e = tls_scratch.lookup(&zero);
    if (!e)
        return 0;
    __builtin_memset(e, 0, __builtin_offsetof(struct tls_event, data));
    e->ts_ns = bpf_ktime_get_ns();
    e->ssl = k.ssl;
    owner(&e->owner, id);
    e->dir = TLS_FREE;
    e->fd = -1;
    e->conn = conn;
    if (tls_events.ringbuf_output(e, __builtin_offsetof(struct tls_event, data), BPF_RB_NO_WAKEUP) < 0)
        count(T_LOST);
    return 0;
}
