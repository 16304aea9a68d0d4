/*
 * _cwire: the DNS wire decoder of detector/dns/wire.py, in C.
 *
 * Same input, same DnsEvent, same error kinds as wire.decode (the Python
 * version stays the reference and the fallback; tests/test_wire_c.py checks
 * that both agree on every message of the shared captures and on mutated
 * ones). Why: decoding is the largest share of replay time in pure Python.
 *
 * Safety: every read is bounds-checked against the message length; name
 * decompression follows at most MAX_HOPS pointers and stops at 255 bytes on
 * the wire (labels, their length bytes and the root).
 * Names are escaped as dig does (\DDD, "\."), so no raw control byte leaves.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

#define MAX_HOPS 64
#define MAX_NAME 255 /* bytes of a name on the wire, with the root byte (RFC 1035 2.3.4) */
#define NAME_MAX_TEXT (255 * 4 + 8)

static PyObject *DnsEvent, *Question, *Answer, *Edns, *DnsParseError;
static PyObject *s_malformed, *s_edns, *s_rcode, *s_answers;

/* Records are built by field name: these are the keyword names passed to each
 * class (setup() checks every one is a field of the dataclass it is given). */
static const char *EVENT_FIELDS[] = {"ts", "transport", "ip_version", "src_ip", "src_port", "dst_ip",
                                     "dst_port", "id", "flags", "rcode", "questions", "answers",
                                     "ancount", "nscount", "arcount", "size", NULL};
static const char *QUESTION_FIELDS[] = {"name", "qtype", "qclass", NULL};
static const char *ANSWER_FIELDS[] = {"name", "rtype", "ttl", "data", "rdlength", NULL};
static const char *EDNS_FIELDS[] = {"udp_size", "do", "version", "client_subnet", NULL};
enum { N_EVENT = 16, N_QUESTION = 3, N_ANSWER = 5, N_EDNS = 4 };
static PyObject *kw_event, *kw_question, *kw_answer, *kw_edns;

/* cls(**dict(zip(kwnames, v))); steals the n references in v (NULL entries: a failed
 * conversion, so nothing is called). When setup() found the names to be the class's
 * first fields in their declared order, the same values go positionally (kwnames
 * NULL): the dataclass __init__ then skips matching keywords, ~0.4 us an event. */
static PyObject *build(PyObject *cls, PyObject *kwnames, PyObject **v, int n) {
    PyObject *r = NULL;
    int ok = 1;
    for (int i = 0; i < n; i++) ok &= v[i] != NULL;
    if (ok) r = kwnames == Py_None ? PyObject_Vectorcall(cls, v, n, NULL)
                                   : PyObject_Vectorcall(cls, v, 0, kwnames);
    for (int i = 0; i < n; i++) Py_XDECREF(v[i]);
    return r;
}

/* error kinds (interned once) */
enum { E_OK = 0, E_TRUNC_NAME, E_LOOP, E_BAD_PTR, E_BAD_LABEL, E_TOO_LONG,
       E_TRUNC_Q, E_TRUNC_REC, E_BAD_RDATA, E_COUNT };
static const char *E_NAMES[E_COUNT] = {
    "", "truncated_name", "compression_loop", "bad_pointer", "bad_label",
    "name_too_long", "truncated_question", "truncated_record", "bad_rdata"};
static PyObject *E_STR[E_COUNT];

static int is_safe(unsigned char c) {
    if (c < 0x21 || c > 0x7E) return 0;
    switch (c) {
    case '.': case '\\': case '"': case '(': case ')': case ';': case '@': case '$':
        return 0;
    }
    return 1;
}

/* Decode the name at *off into text; *next = offset after the name in place. */
static int read_name(const unsigned char *b, Py_ssize_t n, Py_ssize_t off, char *out,
                     Py_ssize_t *outlen, Py_ssize_t *next) {
    Py_ssize_t end = -1, o = 0;
    int hops = 0, total = 0, labels = 0;
    for (;;) {
        if (off >= n) return E_TRUNC_NAME;
        unsigned ln = b[off];
        if (ln == 0) { off++; break; }
        unsigned t = ln & 0xC0;
        if (t == 0xC0) {
            if (off + 1 >= n) return E_TRUNC_NAME;
            Py_ssize_t ptr = ((ln & 0x3F) << 8) | b[off + 1];
            if (end < 0) end = off + 2;
            if (++hops > MAX_HOPS) return E_LOOP;
            if (ptr >= n) return E_BAD_PTR;
            off = ptr;
            continue;
        }
        if (t) return E_BAD_LABEL;
        off++;
        if (off + (Py_ssize_t)ln > n) return E_TRUNC_NAME;
        total += ln + 1;
        if (total >= MAX_NAME) return E_TOO_LONG; /* with the root byte, over 255 */
        if (labels++) out[o++] = '.';
        for (unsigned i = 0; i < ln; i++) {
            unsigned char c = b[off + i];
            if (is_safe(c)) out[o++] = (char)c;
            else if (c == '.' || c == '\\' || c == '"' || c == '(' || c == ')' || c == ';' ||
                     c == '@' || c == '$') {
                out[o++] = '\\'; out[o++] = (char)c;
            } else {
                out[o++] = '\\';
                out[o++] = (char)('0' + c / 100);
                out[o++] = (char)('0' + (c / 10) % 10);
                out[o++] = (char)('0' + c % 10);
            }
        }
        off += ln;
    }
    if (!labels) out[o++] = '.';
    *outlen = o;
    *next = end >= 0 ? end : off;
    return E_OK;
}

static PyObject *name_obj(const unsigned char *b, Py_ssize_t n, Py_ssize_t off, Py_ssize_t *next,
                          int *err) {
    char buf[NAME_MAX_TEXT];
    Py_ssize_t len;
    *err = read_name(b, n, off, buf, &len, next);
    if (*err) return NULL;
    return PyUnicode_DecodeASCII(buf, len, NULL);
}

static Py_ssize_t skip_name(const unsigned char *b, Py_ssize_t n, Py_ssize_t off, int *err) {
    for (;;) {
        if (off >= n) { *err = E_TRUNC_NAME; return -1; }
        unsigned ln = b[off];
        if (ln == 0) return off + 1;
        if ((ln & 0xC0) == 0xC0) return off + 2;
        if (ln & 0xC0) { *err = E_BAD_LABEL; return -1; }
        off += ln + 1;
    }
}

static PyObject *hex_obj(const unsigned char *p, Py_ssize_t len) {
    static const char hx[] = "0123456789abcdef";
    PyObject *s = PyUnicode_New(len * 2, 127);
    if (!s) return NULL;
    Py_UCS1 *d = PyUnicode_1BYTE_DATA(s);
    for (Py_ssize_t i = 0; i < len; i++) { d[2 * i] = hx[p[i] >> 4]; d[2 * i + 1] = hx[p[i] & 15]; }
    return s;
}

static PyObject *ip_obj(int af, const unsigned char *p) {
    char t[INET6_ADDRSTRLEN];
    if (!inet_ntop(af, p, t, sizeof t)) return NULL;
    return PyUnicode_FromString(t);
}

static PyObject *txt_obj(const unsigned char *rd, Py_ssize_t n) {
    /* each char-string: printable as is, \\ and \" escaped, others \DDD; joined by spaces */
    char *out = PyMem_Malloc(n * 4 + 2);
    if (!out) return PyErr_NoMemory();
    Py_ssize_t i = 0, o = 0;
    int first = 1;
    while (i < n) {
        unsigned ln = rd[i];
        Py_ssize_t s = i + 1, e = i + 1 + ln;
        if (e > n) e = n;
        if (!first) out[o++] = ' ';
        first = 0;
        for (Py_ssize_t k = s; k < e; k++) {
            unsigned char c = rd[k];
            if (c >= 0x20 && c < 0x7F && c != '\\' && c != '"') out[o++] = (char)c;
            else if (c == '\\' || c == '"') { out[o++] = '\\'; out[o++] = (char)c; }
            else {
                out[o++] = '\\';
                out[o++] = (char)('0' + c / 100);
                out[o++] = (char)('0' + (c / 10) % 10);
                out[o++] = (char)('0' + c % 10);
            }
        }
        i += 1 + ln;
    }
    PyObject *r = PyUnicode_DecodeASCII(out, o, NULL);
    PyMem_Free(out);
    return r;
}

static inline unsigned u16(const unsigned char *p) { return (p[0] << 8) | p[1]; }
static inline uint32_t u32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* rdata as text; NULL with *err set for a DNS error, NULL without for a Python error */
static PyObject *rdata_obj(const unsigned char *b, Py_ssize_t n, unsigned rtype, Py_ssize_t off,
                           Py_ssize_t rdlen, int *err) {
    Py_ssize_t nx;
    *err = 0;
    if (rtype == 1 && rdlen == 4) return ip_obj(AF_INET, b + off);
    if (rtype == 28 && rdlen == 16) return ip_obj(AF_INET6, b + off);
    if (rtype == 5 || rtype == 2 || rtype == 12 || rtype == 39) return name_obj(b, n, off, &nx, err);
    if (rtype == 15 && rdlen >= 3) {
        PyObject *nm = name_obj(b, n, off + 2, &nx, err);
        if (!nm) return NULL;
        PyObject *r = PyUnicode_FromFormat("%u %U", u16(b + off), nm);
        Py_DECREF(nm);
        return r;
    }
    if (rtype == 16) return txt_obj(b + off, rdlen);
    if (rtype == 33 && rdlen >= 7) {
        PyObject *nm = name_obj(b, n, off + 6, &nx, err);
        if (!nm) return NULL;
        PyObject *r = PyUnicode_FromFormat("%u %u %u %U", u16(b + off), u16(b + off + 2),
                                           u16(b + off + 4), nm);
        Py_DECREF(nm);
        return r;
    }
    if (rtype == 6) {
        Py_ssize_t o;
        PyObject *m = name_obj(b, n, off, &o, err);
        if (!m) return NULL;
        PyObject *r = name_obj(b, n, o, &o, err);
        if (!r) { Py_DECREF(m); return NULL; }
        PyObject *res;
        if (o + 20 <= n) {
            res = PyUnicode_FromFormat("%U %U %lu %lu %lu %lu %lu", m, r,
                                       (unsigned long)u32(b + o), (unsigned long)u32(b + o + 4),
                                       (unsigned long)u32(b + o + 8), (unsigned long)u32(b + o + 12),
                                       (unsigned long)u32(b + o + 16));
        } else {
            res = PyUnicode_FromFormat("%U %U", m, r);
        }
        Py_DECREF(m); Py_DECREF(r);
        return res;
    }
    return hex_obj(b + off, rdlen < 512 ? rdlen : 512);
}

static PyObject *edns_obj(const unsigned char *b, Py_ssize_t off, Py_ssize_t rdlen, unsigned cls,
                          uint32_t ttl) {
    unsigned version = (ttl >> 16) & 0xFF;
    int do_bit = (ttl & 0x8000) != 0;
    PyObject *ecs = NULL;
    Py_ssize_t end = off + rdlen;
    while (off + 4 <= end) {
        unsigned code = u16(b + off), ln = u16(b + off + 2);
        off += 4;
        if (code == 8 && ln >= 4 && off + (Py_ssize_t)ln <= end) {
            unsigned fam = u16(b + off), pfx = b[off + 2];
            unsigned char addr[16] = {0};
            Py_ssize_t al = ln - 4;
            if (fam == 1 || fam == 2) {
                Py_ssize_t cap = fam == 1 ? 4 : 16;
                memcpy(addr, b + off + 4, al < cap ? al : cap);
                char t[INET6_ADDRSTRLEN];
                if (inet_ntop(fam == 1 ? AF_INET : AF_INET6, addr, t, sizeof t)) {
                    Py_XDECREF(ecs);
                    ecs = PyUnicode_FromFormat("%s/%u", t, pfx);
                    if (!ecs) return NULL;
                }
            }
        }
        off += ln;
    }
    PyObject *v[N_EDNS] = {PyLong_FromLong(cls), Py_NewRef(do_bit ? Py_True : Py_False),
                           PyLong_FromLong(version), ecs ? ecs : Py_NewRef(Py_None)};
    return build(Edns, kw_edns, v, N_EDNS);
}

static int set_malformed(PyObject *ev, int err) {
    return PyObject_SetAttr(ev, s_malformed, E_STR[err]);
}

static PyObject *decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 8 || nargs > 9) {
        PyErr_SetString(PyExc_TypeError, "decode(buf, ts, transport, ip_version, src_ip, src_port, "
                                         "dst_ip, dst_port, max_answers=64)");
        return NULL;
    }
    Py_ssize_t max_answers = 64;
    if (nargs == 9) {
        max_answers = PyLong_AsSsize_t(args[8]);
        if (max_answers == -1 && PyErr_Occurred()) return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *b = view.buf;
    Py_ssize_t n = view.len;
    PyObject *ev = NULL, *questions = NULL, *answers = NULL;
    if (n < 12) {
        PyObject *e = PyObject_CallFunction(DnsParseError, "ss", "short_header", "");
        if (e) {
            PyObject *msg = PyUnicode_FromFormat("short_header: %zd bytes", n);
            if (msg) {
                PyObject *a = PyTuple_Pack(1, msg);
                if (a) { PyObject_SetAttrString(e, "args", a); Py_DECREF(a); }
                Py_DECREF(msg);
            }
            PyErr_SetObject(DnsParseError, e);
            Py_DECREF(e);
        }
        PyBuffer_Release(&view);
        return NULL;
    }
    unsigned mid = u16(b), flags = u16(b + 2), qd = u16(b + 4), an = u16(b + 6), ns = u16(b + 8),
             ar = u16(b + 10);
    questions = PyList_New(0);
    answers = PyList_New(0);
    if (!questions || !answers) goto fail;
    {
        PyObject *v[N_EVENT] = {
            Py_NewRef(args[1]), Py_NewRef(args[2]), Py_NewRef(args[3]), Py_NewRef(args[4]),
            Py_NewRef(args[5]), Py_NewRef(args[6]), Py_NewRef(args[7]), PyLong_FromLong(mid),
            PyLong_FromLong(flags), PyLong_FromLong(flags & 0xF), Py_NewRef(questions),
            Py_NewRef(answers), PyLong_FromLong(an), PyLong_FromLong(ns), PyLong_FromLong(ar),
            PyLong_FromSsize_t(n)};
        ev = build(DnsEvent, kw_event, v, N_EVENT);
        if (!ev) goto fail;
    }
    Py_ssize_t off = 12;
    int err = 0;
    for (unsigned i = 0; i < qd; i++) {
        Py_ssize_t nx;
        PyObject *name = name_obj(b, n, off, &nx, &err);
        if (!name) {
            if (err) goto malformed;
            goto fail;
        }
        off = nx;
        if (off + 4 > n) { Py_DECREF(name); err = E_TRUNC_Q; goto malformed; }
        PyObject *qv[N_QUESTION] = {name, PyLong_FromLong(u16(b + off)),
                                    PyLong_FromLong(u16(b + off + 2))};
        PyObject *q = build(Question, kw_question, qv, N_QUESTION);
        if (!q) goto fail;
        off += 4;
        int r = PyList_Append(questions, q);
        Py_DECREF(q);
        if (r < 0) goto fail;
    }
    if (!(an || ns || ar)) goto done;
    for (unsigned i = 0; i < an; i++) {
        if (off >= n) { err = E_TRUNC_REC; goto malformed; }
        if (b[off] >= 0xC0 && off + 1 >= n) { err = E_TRUNC_REC; goto malformed; }
        Py_ssize_t nx;
        PyObject *name = name_obj(b, n, off, &nx, &err);
        if (!name) { if (err) goto malformed; goto fail; }
        off = nx;
        if (off + 10 > n) { Py_DECREF(name); err = E_TRUNC_REC; goto malformed; }
        unsigned rtype = u16(b + off);
        uint32_t ttl = u32(b + off + 4);
        Py_ssize_t rdlen = u16(b + off + 8);
        off += 10;
        Py_ssize_t end = off + rdlen;
        if (end > n) { Py_DECREF(name); err = E_TRUNC_REC; goto malformed; }
        if ((Py_ssize_t)i < max_answers) {
            PyObject *data = rdata_obj(b, n, rtype, off, rdlen, &err);
            if (!data) { Py_DECREF(name); if (err) goto malformed; goto fail; }
            PyObject *av[N_ANSWER] = {name, PyLong_FromLong(rtype), PyLong_FromUnsignedLong(ttl),
                                      data, PyLong_FromSsize_t(rdlen)};
            PyObject *a = build(Answer, kw_answer, av, N_ANSWER);
            if (!a) goto fail;
            int r = PyList_Append(answers, a);
            Py_DECREF(a);
            if (r < 0) goto fail;
        } else {
            Py_DECREF(name);
        }
        off = end;
    }
    for (unsigned i = 0; i < ns; i++) {
        off = skip_name(b, n, off, &err);
        if (off < 0) goto malformed;
        if (off + 10 > n) { err = E_TRUNC_REC; goto malformed; }
        off += 10 + u16(b + off + 8);
    }
    int have_edns = 0;
    for (unsigned i = 0; i < ar; i++) {
        off = skip_name(b, n, off, &err);
        if (off < 0) goto malformed;
        if (off + 10 > n) { err = E_TRUNC_REC; goto malformed; }
        unsigned rtype = u16(b + off), cls = u16(b + off + 2);
        uint32_t ttl = u32(b + off + 4);
        Py_ssize_t rdlen = u16(b + off + 8);
        off += 10;
        if (rtype == 41 && !have_edns) {
            Py_ssize_t avail = n - off;
            PyObject *ed = edns_obj(b, off, rdlen < avail ? rdlen : avail, cls, ttl);
            if (!ed) goto fail;
            have_edns = 1;
            int r = PyObject_SetAttr(ev, s_edns, ed);
            Py_DECREF(ed);
            if (r < 0) goto fail;
            PyObject *rc = PyLong_FromLong((flags & 0xF) | ((ttl >> 24) << 4));
            if (!rc) goto fail;
            r = PyObject_SetAttr(ev, s_rcode, rc);
            Py_DECREF(rc);
            if (r < 0) goto fail;
        }
        off += rdlen;
    }
    if (off > n) { err = E_TRUNC_REC; goto malformed; }
    goto done;
malformed:
    if (set_malformed(ev, err) < 0) goto fail;
done:
    Py_DECREF(questions);
    Py_DECREF(answers);
    PyBuffer_Release(&view);
    return ev;
fail:
    Py_XDECREF(ev);
    Py_XDECREF(questions);
    Py_XDECREF(answers);
    PyBuffer_Release(&view);
    return NULL;
}

/* A tuple of the names, after checking each is a field of the dataclass ``cls``. */
static PyObject *field_names(PyObject *cls, const char **names) {
    PyObject *fields = PyObject_GetAttrString(cls, "__dataclass_fields__");
    if (!fields) return NULL;
    Py_ssize_t n = 0;
    while (names[n]) n++;
    PyObject *t = PyTuple_New(n);
    for (Py_ssize_t i = 0; t && i < n; i++) {
        PyObject *s = PyUnicode_InternFromString(names[i]);
        if (!s) { Py_CLEAR(t); break; }
        PyTuple_SET_ITEM(t, i, s);
        int has = PyMapping_HasKey(fields, s);
        if (!has) {
            PyErr_Format(PyExc_TypeError, "_cwire: %S has no field %R (rebuild the C decoder: ./setup.sh)",
                         cls, s);
            Py_CLEAR(t);
        }
    }
    /* the names are the leading fields, in order: build positionally (Py_None) */
    if (t) {
        PyObject *keys = PyMapping_Keys(fields);
        int same = keys && PyList_GET_SIZE(keys) >= n;
        for (Py_ssize_t i = 0; same && i < n; i++)
            same = PyUnicode_Compare(PyList_GET_ITEM(keys, i), PyTuple_GET_ITEM(t, i)) == 0;
        Py_XDECREF(keys);
        if (!keys) Py_CLEAR(t);
        else if (same) Py_SETREF(t, Py_NewRef(Py_None));
    }
    Py_DECREF(fields);
    return t;
}

static PyObject *setup(PyObject *self, PyObject *args) {
    PyObject *a, *b, *c, *d, *e;
    if (!PyArg_ParseTuple(args, "OOOOO", &a, &b, &c, &d, &e)) return NULL;
    PyObject *ke = NULL, *kq = NULL, *ka = NULL, *kd = NULL;
    if (!(ke = field_names(a, EVENT_FIELDS)) || !(kq = field_names(b, QUESTION_FIELDS)) ||
        !(ka = field_names(c, ANSWER_FIELDS)) || !(kd = field_names(d, EDNS_FIELDS))) {
        Py_XDECREF(ke); Py_XDECREF(kq); Py_XDECREF(ka); Py_XDECREF(kd);
        return NULL;
    }
    Py_XSETREF(kw_event, ke);
    Py_XSETREF(kw_question, kq);
    Py_XSETREF(kw_answer, ka);
    Py_XSETREF(kw_edns, kd);
    Py_XSETREF(DnsEvent, Py_NewRef(a));
    Py_XSETREF(Question, Py_NewRef(b));
    Py_XSETREF(Answer, Py_NewRef(c));
    Py_XSETREF(Edns, Py_NewRef(d));
    Py_XSETREF(DnsParseError, Py_NewRef(e));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL,
     "decode(buf, ts, transport, ip_version, src_ip, src_port, dst_ip, dst_port, max_answers=64)"
     " -> DnsEvent; the C twin of detector.dns.wire.decode"},
    {"setup", setup, METH_VARARGS, "setup(DnsEvent, Question, Answer, Edns, DnsParseError)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_cwire", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cwire(void) {
    PyObject *m = PyModule_Create(&mod);
    if (!m) return NULL;
    s_malformed = PyUnicode_InternFromString("malformed");
    s_edns = PyUnicode_InternFromString("edns");
    s_rcode = PyUnicode_InternFromString("rcode");
    s_answers = PyUnicode_InternFromString("answers");
    for (int i = 0; i < E_COUNT; i++) E_STR[i] = PyUnicode_InternFromString(E_NAMES[i]);
    return m;
}
