/*
 * _cframe: classic pcap records to DnsEvents in C, a batch at a time.
 *
 * Why: in `detector replay pcap` the Python cost per packet was the reader's
 * generator, PacketDecoder.frame and its byte slicing, more than the DNS
 * decoding itself. scan() walks the whole records of a piece of a capture and
 * decodes the common case here, with the C DNS decoder of detector/dns/_cwire.c
 * (through its capsule): Ethernet (802.1Q/QinQ tags), Linux cooked v1 and v2
 * and raw IP; IPv4 that is not a fragment, with lengths that fit the captured
 * bytes; IPv6 with UDP as the first header; UDP to or from a DNS port. Every
 * other record (TCP, fragments, tunnels, other link types, lengths that claim
 * more than was captured, anything odd) goes to PacketDecoder.frame as it is,
 * in order, so events, their order and every counter stay what the Python
 * path gives (tests/test_fast_path.py compares them over the shared captures).
 *
 * Each condition below is the one under which PacketDecoder (layers.py) takes
 * the same branches: a change there needs the same change here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

/* Declared the same in detector/dns/_cwire.c. */
typedef struct {
    int version;
    PyObject *(*decode_msg)(const unsigned char *b, Py_ssize_t n, PyObject *msg,
                            PyObject *const *meta, Py_ssize_t max_answers, int *mal_out);
    const char *const *kinds;
    int nkinds;
} CwireApi;
#define CWIRE_API_VERSION 1

#define MAX_KINDS 32 /* damage kinds _cwire may name */
#define MAX_CAPLEN 0x4000000 /* a record claiming more is corrupt (pcap.py says so) */
#define EXPIRE_EVERY 5.0     /* PacketDecoder.frame expires fragments and TCP streams this often */
#define MAX_ANSWERS 64

static CwireApi *api;
static PyObject *s_udp, *s_frame, *s_last_expire, *s_short_header, *kind_stat[MAX_KINDS];
static PyObject *ipv4_obj, *ipv6_obj, *ONE;

static inline unsigned u16(const unsigned char *p) { return (p[0] << 8) | p[1]; }
static inline uint32_t u32(const unsigned char *p, int big) {
    return big ? ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]
               : ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

/* Address text, cached: a capture's resolvers and clients repeat. Direct-mapped,
 * a slot replaced on a miss; the strings are immutable, so sharing them is safe. */
#define CACHE_BITS 12
#define CACHE_SLOTS (1 << CACHE_BITS)
static struct { uint32_t key; PyObject *text; } cache4[CACHE_SLOTS];
static struct { unsigned char key[16]; PyObject *text; } cache6[CACHE_SLOTS];

static PyObject *addr4(const unsigned char *p) {
    uint32_t key = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    unsigned slot = (key * 2654435761u) >> (32 - CACHE_BITS);
    PyObject *t = cache4[slot].text;
    if (t && cache4[slot].key == key) return Py_NewRef(t);
    char buf[16];
    int len = snprintf(buf, sizeof buf, "%u.%u.%u.%u", p[0], p[1], p[2], p[3]); /* as inet_ntoa */
    t = PyUnicode_DecodeASCII(buf, len, NULL);
    if (!t) return NULL;
    Py_XSETREF(cache4[slot].text, Py_NewRef(t));
    cache4[slot].key = key;
    return t;
}

static PyObject *addr6(const unsigned char *p) {
    uint32_t h = 0;
    for (int i = 0; i < 16; i += 4)
        h = (h ^ (((uint32_t)p[i] << 24) | ((uint32_t)p[i + 1] << 16) | ((uint32_t)p[i + 2] << 8) | p[i + 3]))
            * 2654435761u;
    unsigned slot = h >> (32 - CACHE_BITS);
    PyObject *t = cache6[slot].text;
    if (t && !memcmp(cache6[slot].key, p, 16)) return Py_NewRef(t);
    char buf[INET6_ADDRSTRLEN];
    if (!inet_ntop(AF_INET6, p, buf, sizeof buf)) { /* socket.inet_ntop calls the same */
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    t = PyUnicode_DecodeASCII(buf, strlen(buf), NULL);
    if (!t) return NULL;
    Py_XSETREF(cache6[slot].text, Py_NewRef(t));
    memcpy(cache6[slot].key, p, 16);
    return t;
}

/* Where one frame's UDP datagram to or from a DNS port is, when the frame is on the
 * fast path: 1 and the fields set, else 0 (PacketDecoder.frame decides it). */
typedef struct {
    int ipv;
    const unsigned char *src, *dst; /* 4 or 16 bytes */
    unsigned sport, dport;
    const unsigned char *payload;
    Py_ssize_t plen;
} Udp;

static int locate(const unsigned char *d, Py_ssize_t n, int linktype, const unsigned char *ports,
                  Udp *u) {
    Py_ssize_t o;
    unsigned et;
    switch (linktype) {
    case 1: /* Ethernet */
        if (n < 14) return 0;
        et = u16(d + 12), o = 14;
        break;
    case 113: /* Linux cooked (SLL) */
        if (n < 16) return 0;
        et = u16(d + 14), o = 16;
        break;
    case 276: /* Linux cooked v2 (SLL2) */
        if (n < 20) return 0;
        et = u16(d), o = 20;
        break;
    case 101: case 12: case 14: case 228: case 229: /* raw IP, raw IPv4, raw IPv6 */
        et = 0, o = 0;
        break;
    default:
        return 0;
    }
    if (o) {
        while (et == 0x8100 || et == 0x88A8 || et == 0x9100) { /* 802.1Q, QinQ tags */
            if (o + 4 > n) return 0;
            et = u16(d + o + 2), o += 4;
        }
        if (et != 0x0800 && et != 0x86DD) return 0;
    }
    if (o >= n) return 0;
    Py_ssize_t p, end;
    unsigned ver = d[o] >> 4;
    if (ver == 4) {
        Py_ssize_t ihl = (d[o] & 0x0F) * 4, total;
        if (ihl < 20 || o + 20 > n) return 0;
        total = u16(d + o + 2), end = o + total;
        if (total < ihl || end > n) return 0;     /* ip_bad_length: Python */
        if (u16(d + o + 6) & 0x3FFF) return 0;    /* a fragment */
        if (d[o + 9] != 17) return 0;             /* not UDP */
        u->ipv = 4, u->src = d + o + 12, u->dst = d + o + 16;
        p = o + ihl;
    } else if (ver == 6) {
        if (o + 40 > n) return 0;
        Py_ssize_t plen = u16(d + o + 4);
        end = o + 40 + plen;
        if (!plen || end > n) return 0;           /* jumbogram or ip_bad_length: Python */
        if (d[o + 6] != 17) return 0;             /* an extension header first, or not UDP */
        u->ipv = 6, u->src = d + o + 8, u->dst = d + o + 24;
        p = o + 40;
    } else {
        return 0;
    }
    if (end - p < 8) return 0;
    unsigned ulen = u16(d + p + 4);
    if (ulen < 8 || ulen > end - p) return 0;     /* udp_bad_length: Python */
    u->sport = u16(d + p), u->dport = u16(d + p + 2);
    if (!(ports[u->dport >> 3] & (1 << (u->dport & 7))) && !(ports[u->sport >> 3] & (1 << (u->sport & 7))))
        return 0;                                 /* not DNS: encapsulations, DoQ, not_dns */
    u->payload = d + p + 8, u->plen = ulen - 8;
    return 1;
}

/* Counters of one scan() call: packets and messages, added to the decoder's by
 * layers.py; the skip reasons go to the decoder's stats Counter as they happen, so
 * its keys come in the order the Python path gives them (the summary lists them so). */
typedef struct {
    Py_ssize_t packets, dns;
    PyObject *stats;
} Counts;

static int count(PyObject *stats, PyObject *key) {
    if (!key) return 0;
    PyObject *v = PyDict_GetItemWithError(stats, key);
    if (!v && PyErr_Occurred()) return -1;
    PyObject *n = v ? PyNumber_Add(v, ONE) : Py_NewRef(ONE);
    if (!n) return -1;
    int rc = PyDict_SetItem(stats, key, n);
    Py_DECREF(n);
    return rc;
}

/* Decode the located message onto out: 1, or 0 when the DNS decoder raised (the
 * frame then goes to the Python path, which has its own say on the error), -1 on a
 * Python error of our own. */
static int emit(const Udp *u, PyObject *ts, PyObject *out, Counts *c) {
    if (u->plen < 12) /* wire.decode raises short_header; _dns counts it */
        return count(c->stats, s_short_header) < 0 ? -1 : 1;
    PyObject *meta[7] = {ts, s_udp, u->ipv == 4 ? ipv4_obj : ipv6_obj,
                         u->ipv == 4 ? addr4(u->src) : addr6(u->src), PyLong_FromLong(u->sport),
                         u->ipv == 4 ? addr4(u->dst) : addr6(u->dst), PyLong_FromLong(u->dport)};
    int rc = -1, mal = 0;
    if (meta[3] && meta[4] && meta[5] && meta[6]) {
        PyObject *ev = api->decode_msg(u->payload, u->plen, NULL, meta, MAX_ANSWERS, &mal);
        if (ev) {
            rc = PyList_Append(out, ev) < 0 ? -1 : 1;
            Py_DECREF(ev);
            c->dns++;
            if (rc > 0 && mal > 0 && mal < MAX_KINDS && count(c->stats, kind_stat[mal]) < 0) rc = -1;
        } else if (PyErr_ExceptionMatches(PyExc_Exception)) {
            PyErr_Clear();
            rc = 0;
        }
    }
    for (int i = 3; i < 7; i++) Py_XDECREF(meta[i]);
    return rc;
}

/* The Python path for one frame: dec.frame(ts, linktype, bytes) onto out. */
static int slow(PyObject *frame, PyObject *ts, PyObject *lt, const unsigned char *d, Py_ssize_t n,
                PyObject *out) {
    PyObject *data = PyBytes_FromStringAndSize((const char *)d, n);
    if (!data) return -1;
    PyObject *args[3] = {ts, lt, data};
    PyObject *evs = PyObject_Vectorcall(frame, args, 3, NULL);
    Py_DECREF(data);
    if (!evs) return -1;
    int rc = 0;
    if (!PyList_Check(evs)) {
        PyErr_SetString(PyExc_TypeError, "_cframe: frame() must return a list");
        rc = -1;
    } else if (PyList_GET_SIZE(evs)) {
        Py_ssize_t at = PyList_GET_SIZE(out);
        rc = PyList_SetSlice(out, at, at, evs);
    }
    Py_DECREF(evs);
    return rc;
}

static int last_expire(PyObject *dec, double *v) {
    PyObject *o = PyObject_GetAttr(dec, s_last_expire);
    if (!o) return -1;
    *v = PyFloat_AsDouble(o);
    Py_DECREF(o);
    return *v == -1.0 && PyErr_Occurred() ? -1 : 0;
}

static int port_map(PyObject *ports, unsigned char *map) {
    memset(map, 0, 8192);
    PyObject *it = PyObject_GetIter(ports), *p;
    if (!it) return -1;
    while ((p = PyIter_Next(it))) {
        long v = PyLong_Check(p) ? PyLong_AsLong(p) : -1;
        Py_DECREF(p);
        if (v == -1 && PyErr_Occurred()) PyErr_Clear(); /* not a port: never matches */
        else if (v >= 0 && v < 65536) map[v >> 3] |= 1 << (v & 7);
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "scan(decoder, buf, off, size, big_endian, resolution, "
                                         "linktype, limit, ports, out, stats)");
        return NULL;
    }
    PyObject *dec = args[0], *out = args[9];
    Py_ssize_t off = PyLong_AsSsize_t(args[2]), size = PyLong_AsSsize_t(args[3]);
    int big = PyObject_IsTrue(args[4]);
    double res = PyFloat_AsDouble(args[5]);
    long linktype = PyLong_AsLong(args[6]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred()) return NULL;
    if (!PyList_Check(out) || !PyDict_Check(args[10])) {
        PyErr_SetString(PyExc_TypeError, "_cframe.scan: out must be a list, stats a dict");
        return NULL;
    }
    unsigned char ports[8192];
    if (port_map(args[8], ports) < 0) return NULL;
    double last;
    if (last_expire(dec, &last) < 0) return NULL;
    PyObject *frame = PyObject_GetAttr(dec, s_frame), *lt = PyLong_FromLong(linktype);
    if (!frame || !lt) { Py_XDECREF(frame); Py_XDECREF(lt); return NULL; }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(frame); Py_DECREF(lt);
        return NULL;
    }
    const unsigned char *b = view.buf;
    if (size > view.len) size = view.len;
    if (off < 0) off = size;
    Counts c;
    c.packets = c.dns = 0;
    c.stats = args[10];
    Py_ssize_t k = 0;
    int err = 0;
    while (k < limit && off + 16 <= size) {
        const unsigned char *h = b + off;
        uint32_t caplen = u32(h + 8, big);
        if (caplen > MAX_CAPLEN || (Py_ssize_t)caplen > size - off - 16) break; /* pcap.py's to say */
        double tsv = (double)u32(h, big) + (double)u32(h + 4, big) * res; /* as sec + frac * res */
        const unsigned char *d = h + 16;
        PyObject *ts = PyFloat_FromDouble(tsv);
        if (!ts) { err = 1; break; }
        Udp u;
        int done = 0;
        /* a packet that is due to expire fragments and TCP streams goes the Python way */
        if (!(tsv - last > EXPIRE_EVERY) && locate(d, caplen, (int)linktype, ports, &u)) {
            done = emit(&u, ts, out, &c);
            if (done > 0) c.packets++;
        }
        if (!done) {
            done = slow(frame, ts, lt, d, caplen, out) < 0 || last_expire(dec, &last) < 0 ? -1 : 1;
        }
        Py_DECREF(ts);
        if (done < 0) { err = 1; break; }
        off += 16 + caplen;
        k++;
    }
    PyBuffer_Release(&view);
    Py_DECREF(frame);
    Py_DECREF(lt);
    if (err) return NULL;
    return Py_BuildValue("nnnn", off, k, c.packets, c.dns);
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(decoder, buf, off, size, big_endian, resolution, linktype, limit, ports, out, stats)\n"
     " -> (off, records, packets, dns_messages)\n\n"
     "Up to limit whole classic-pcap records of buf[off:size]: DNS over UDP on the fast "
     "path decoded here, every other record given to decoder.frame, events onto out in "
     "record order. Stops before a record not whole in buf[:size] or claiming more than "
     "64 MiB. packets and dns_messages are those of the records decoded here "
     "(decoder.frame counts its own); their skip reasons are added to stats."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_cframe", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cframe(void) {
    api = PyCapsule_Import("detector.dns._cwire._C_API", 0);
    if (!api) return NULL;
    if (api->version != CWIRE_API_VERSION || api->nkinds > MAX_KINDS) {
        PyErr_SetString(PyExc_ImportError, "_cframe: built against another _cwire (rebuild: ./setup.sh)");
        return NULL;
    }
    PyObject *m = PyModule_Create(&mod);
    if (!m) return NULL;
    s_udp = PyUnicode_InternFromString("udp");
    s_frame = PyUnicode_InternFromString("frame");
    s_last_expire = PyUnicode_InternFromString("_last_expire");
    s_short_header = PyUnicode_InternFromString("dns_short_header");
    ipv4_obj = PyLong_FromLong(4);
    ipv6_obj = PyLong_FromLong(6);
    ONE = PyLong_FromLong(1);
    for (int i = 1; i < api->nkinds; i++) kind_stat[i] = PyUnicode_FromFormat("dns_%s", api->kinds[i]);
    return m;
}
