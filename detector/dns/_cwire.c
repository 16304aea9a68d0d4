/*
 * _cwire: the DNS wire decoder of detector/dns/wire.py, in C.
 *
 * Same input, same DnsEvent, same damage kinds as wire.decode (the Python
 * version stays the reference and the fallback; tests/test_wire_c.py checks
 * that both agree on every message of the shared captures and on mutated
 * ones). Why: decoding is the largest share of replay time in pure Python.
 * The common path stays here with no Python calls: the header, names, the
 * record types A, AAAA, CNAME, NS, PTR, DNAME, MX, SOA, SRV, TXT and SPF, and
 * OPT with its ECS, COOKIE and PADDING options. The rarer record types and
 * EDNS options are presented by detector/dns/rdata.py (one implementation for
 * both decoders), through the two callbacks given to setup().
 *
 * Safety: every read is bounds-checked against the message length; name
 * decompression follows at most MAX_HOPS pointers and stops at 255 bytes on
 * the wire (labels, their length bytes and the root).
 * Names are escaped as dig does (\DDD, "\."), so no raw control byte leaves.
 * Damage is best effort, as in wire.py (its docstring says what is kept).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

#define MAX_HOPS 64
#define MAX_NAME 255 /* bytes of a name on the wire, with the root byte (RFC 1035 2.3.4) */
#define NAME_MAX_TEXT (255 * 4 + 8)
#define MDNS_PORT 5353
#define T_OPT 41

static PyObject *DnsEvent, *Question, *Answer, *Edns, *EdnsOption, *DnsParseError;
static PyObject *present_cb, *edns_option_cb; /* rdata.present, rdata.edns_option */
static PyObject *s_malformed, *s_empty, *s_ecs, *s_cookie, *s_padding, *empty_tuple;

/* Records are built by field name: these are the keyword names passed to each
 * class (setup() checks every one is a field of the dataclass it is given). */
static const char *EVENT_FIELDS[] = {"ts", "transport", "ip_version", "src_ip", "src_port", "dst_ip",
                                     "dst_port", "id", "flags", "rcode", "questions", "answers",
                                     "authority", "additional", "ancount", "nscount", "arcount",
                                     "size", "edns", NULL};
static const char *QUESTION_FIELDS[] = {"name", "qtype", "qclass", "unicast_response", NULL};
static const char *ANSWER_FIELDS[] = {"name", "rtype", "ttl", "data", "rdlength", "rclass",
                                      "cache_flush", NULL};
static const char *EDNS_FIELDS[] = {"udp_size", "do", "version", "client_subnet",
                                    "client_subnet_scope", "options", "flags", "ext_rcode", NULL};
static const char *OPTION_FIELDS[] = {"code", "name", "data", NULL};
enum { N_EVENT = 19, N_QUESTION = 4, N_ANSWER = 7, N_EDNS = 8, N_OPTION = 3 };
static PyObject *kw_event, *kw_question, *kw_answer, *kw_edns, *kw_option;

/* A record filled slot by slot: what the dataclass's generated __init__ does, without
 * running it. setup() makes one for a class whose __init__ only stores its fields (no
 * __post_init__, every field a slot of its own, given here or with a default), whose
 * leading fields are the names built here in their declared order. Each event's
 * DnsEvent, Questions and Answers then cost an allocation and stores, not the bytecode
 * of three __init__ calls (~2 us an event with its records). */
#define MAX_SLOTS 64
typedef struct {
    PyTypeObject *tp;                /* NULL: no plan, build() calls the class */
    int given, nslots;               /* the first `given` slots are the values passed */
    Py_ssize_t off[MAX_SLOTS];       /* each field's slot offset, in declared order */
    PyObject *dflt[MAX_SLOTS];       /* the default of a field not given, or NULL: */
    PyObject *factory[MAX_SLOTS];    /* its default_factory */
} plan_t;
static plan_t plan_event, plan_question, plan_answer;

static void plan_clear(plan_t *p) {
    for (int i = 0; i < p->nslots; i++) { Py_CLEAR(p->dflt[i]); Py_CLEAR(p->factory[i]); }
    Py_CLEAR(p->tp);
    p->given = p->nslots = 0;
}

/* cls(**dict(zip(kwnames, v))); steals the n references in v (NULL entries: a failed
 * conversion, so nothing is called). With a plan (see plan_t) the record is filled
 * slot by slot; else, when setup() found the names to be the class's first fields in
 * their declared order, the values go positionally (kwnames None), else by keyword. */
static PyObject *build_with(const plan_t *p, PyObject *cls, PyObject *kwnames, PyObject **v, int n) {
    PyObject *r = NULL;
    int ok = 1;
    for (int i = 0; i < n; i++) ok &= v[i] != NULL;
    if (ok && p && p->tp && p->given == n) {
        r = p->tp->tp_alloc(p->tp, 0);
        if (r) {
            for (int i = 0; i < n; i++) *(PyObject **)((char *)r + p->off[i]) = v[i]; /* stolen */
            for (int i = n; i < p->nslots; i++) {
                PyObject *d = p->dflt[i] ? Py_NewRef(p->dflt[i]) : PyObject_CallNoArgs(p->factory[i]);
                if (!d) { Py_CLEAR(r); break; } /* the slots not set yet are NULL: dealloc skips them */
                *(PyObject **)((char *)r + p->off[i]) = d;
            }
            return r;
        }
    } else if (ok) {
        r = kwnames == Py_None ? PyObject_Vectorcall(cls, v, n, NULL)
                               : PyObject_Vectorcall(cls, v, 0, kwnames);
    }
    for (int i = 0; i < n; i++) Py_XDECREF(v[i]);
    return r;
}
#define build(cls, kwnames, v, n) build_with(NULL, cls, kwnames, v, n)

/* The plan for cls (see plan_t), from spec = ((name, default, default_factory), ...)
 * for every field in declared order, missing = dataclasses.MISSING. 0 and the plan left
 * empty when cls does not qualify (build() then calls it); -1 on an error. */
static int plan_make(plan_t *p, PyObject *cls, PyObject *kwnames, int given, PyObject *spec,
                     PyObject *missing) {
    plan_clear(p);
    if (spec == Py_None || kwnames != Py_None || !PyType_Check(cls)) return 0;
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) > MAX_SLOTS || PyTuple_GET_SIZE(spec) < given) {
        PyErr_SetString(PyExc_TypeError, "_cwire.setup: a plan is a tuple of (name, default, factory)");
        return -1;
    }
    int n = (int)PyTuple_GET_SIZE(spec);
    for (int i = 0; i < n; i++) {
        PyObject *f = PyTuple_GET_ITEM(spec, i), *name, *dflt, *fac;
        if (!PyArg_ParseTuple(f, "UOO", &name, &dflt, &fac)) { plan_clear(p); return -1; }
        PyObject *d = PyObject_GetAttr(cls, name);
        if (!d) { plan_clear(p); return -1; }
        int slot = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
                   ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX &&
                   !(((PyMemberDescrObject *)d)->d_member->flags & READONLY);
        Py_ssize_t off = slot ? ((PyMemberDescrObject *)d)->d_member->offset : 0;
        Py_DECREF(d);
        if (!slot || (i >= given && dflt == missing && fac == missing)) { plan_clear(p); return 0; }
        p->off[i] = off;
        if (i >= given) {
            if (dflt != missing) p->dflt[i] = Py_NewRef(dflt);
            else p->factory[i] = Py_NewRef(fac);
        }
        p->nslots = i + 1;
    }
    p->given = given;
    p->tp = (PyTypeObject *)Py_NewRef(cls);
    return 0;
}

/* damage kinds (interned once) */
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

/* Offset after the labels in place from off (a pointer ends them), or -1 when they
 * run off the end or hit a reserved label type (wire._skim). */
static Py_ssize_t skim(const unsigned char *b, Py_ssize_t n, Py_ssize_t off) {
    while (off < n) {
        unsigned ln = b[off];
        if (ln == 0) return off + 1;
        if (ln >= 0xC0) return off + 1 < n ? off + 2 : -1;
        if (ln & 0xC0) return -1;
        off += ln + 1;
    }
    return -1;
}

/* Decode the name at off into text, best effort (wire.name_at): returns the damage
 * kind (E_OK when none); *next = offset after the name in place, -1 when unknown;
 * the text is the labels decoded before any damage ("" if none, "." for the root). */
static int read_name(const unsigned char *b, Py_ssize_t n, Py_ssize_t off, char *out,
                     Py_ssize_t *outlen, Py_ssize_t *next) {
    Py_ssize_t end = -1, o = 0;
    int hops = 0, total = 0, labels = 0, bad = E_OK;
    for (;;) {
        if (off >= n) { bad = E_TRUNC_NAME; break; }
        unsigned ln = b[off];
        if (ln == 0) { off++; break; }
        unsigned t = ln & 0xC0;
        if (t == 0xC0) {
            if (off + 1 >= n) { bad = E_TRUNC_NAME; break; }
            if (end < 0) end = off + 2;
            if (++hops > MAX_HOPS) { bad = E_LOOP; break; }
            Py_ssize_t ptr = ((ln & 0x3F) << 8) | b[off + 1];
            if (ptr >= n) { bad = E_BAD_PTR; break; }
            off = ptr;
            continue;
        }
        if (t) { bad = E_BAD_LABEL; break; }
        off++;
        if (off + (Py_ssize_t)ln > n) { bad = E_TRUNC_NAME; break; }
        total += ln + 1;
        if (total >= MAX_NAME) { /* with the root byte, over 255 */
            bad = E_TOO_LONG;
            if (end < 0) end = skim(b, n, off - 1);
            break;
        }
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
    if (!labels && !bad) out[o++] = '.';
    *outlen = o;
    *next = bad ? end : (end >= 0 ? end : off);
    return bad;
}

/* The name as a str (NULL only for a Python error); *bad the damage kind. */
static PyObject *name_obj(const unsigned char *b, Py_ssize_t n, Py_ssize_t off, Py_ssize_t *next,
                          int *bad) {
    char buf[NAME_MAX_TEXT];
    Py_ssize_t len;
    *bad = read_name(b, n, off, buf, &len, next);
    return PyUnicode_DecodeASCII(buf, len, NULL);
}

static const char HX[] = "0123456789abcdef";

static PyObject *hex_obj(const unsigned char *p, Py_ssize_t len) {
    PyObject *s = PyUnicode_New(len * 2, 127);
    if (!s) return NULL;
    Py_UCS1 *d = PyUnicode_1BYTE_DATA(s);
    for (Py_ssize_t i = 0; i < len; i++) { d[2 * i] = HX[p[i] >> 4]; d[2 * i + 1] = HX[p[i] & 15]; }
    return s;
}

/* hex of p[0:a], a space, hex of p[a:len] (the COOKIE option: client, server) */
static PyObject *hex2_obj(const unsigned char *p, Py_ssize_t a, Py_ssize_t len) {
    PyObject *s = PyUnicode_New(len * 2 + 1, 127);
    if (!s) return NULL;
    Py_UCS1 *d = PyUnicode_1BYTE_DATA(s);
    Py_ssize_t o = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (i == a) d[o++] = ' ';
        d[o++] = HX[p[i] >> 4]; d[o++] = HX[p[i] & 15];
    }
    return s;
}

static PyObject *ip_obj(int af, const unsigned char *p) {
    char t[INET6_ADDRSTRLEN];
    if (!inet_ntop(af, p, t, sizeof t)) return NULL;
    return PyUnicode_FromString(t);
}

/* TXT/SPF (wire.txt): each character-string in double quotes, " and \ escaped,
 * bytes outside printable ASCII as \DDD; separated by a space */
static PyObject *txt_obj(const unsigned char *rd, Py_ssize_t n) {
    char *out = PyMem_Malloc(n * 7 + 4);
    if (!out) return PyErr_NoMemory();
    Py_ssize_t i = 0, o = 0;
    while (i < n) {
        unsigned ln = rd[i];
        Py_ssize_t s = i + 1, e = i + 1 + ln;
        if (e > n) e = n;
        if (i) out[o++] = ' ';
        out[o++] = '"';
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
        out[o++] = '"';
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

/* "<pref> <name>" and the like: a prefix formatted, then the name */
static PyObject *with_name(PyObject *prefix, const unsigned char *b, Py_ssize_t n, Py_ssize_t off,
                           int *bad) {
    Py_ssize_t nx;
    if (!prefix) return NULL;
    PyObject *nm = name_obj(b, n, off, &nx, bad);
    if (!nm) { Py_DECREF(prefix); return NULL; }
    PyObject *r = PyUnicode_Concat(prefix, nm);
    Py_DECREF(prefix);
    Py_DECREF(nm);
    return r;
}

/* rdata as text (NULL only for a Python error); *bad the damage kind. msg is the
 * message as bytes for the rare-type callback, made once (*bufobj) when needed. */
static PyObject *rdata_obj(const unsigned char *b, Py_ssize_t n, unsigned rtype, Py_ssize_t off,
                           Py_ssize_t rdlen, int *bad, PyObject *msg, PyObject **bufobj) {
    Py_ssize_t nx;
    *bad = 0;
    switch (rtype) {
    case 1:
        if (rdlen == 4) return ip_obj(AF_INET, b + off);
        break;
    case 28:
        if (rdlen == 16) return ip_obj(AF_INET6, b + off);
        break;
    case 5: case 2: case 12: case 39: /* CNAME NS PTR DNAME */
        return name_obj(b, n, off, &nx, bad);
    case 15: /* MX */
        if (rdlen >= 3) return with_name(PyUnicode_FromFormat("%u ", u16(b + off)), b, n, off + 2, bad);
        break;
    case 16: case 99: /* TXT SPF */
        return txt_obj(b + off, rdlen);
    case 33: /* SRV */
        if (rdlen >= 7)
            return with_name(PyUnicode_FromFormat("%u %u %u ", u16(b + off), u16(b + off + 2),
                                                  u16(b + off + 4)), b, n, off + 6, bad);
        break;
    case 6: { /* SOA */
        Py_ssize_t o;
        PyObject *m = name_obj(b, n, off, &o, bad);
        if (!m || o < 0) return m;
        int bad2;
        PyObject *r = name_obj(b, n, o, &o, &bad2);
        if (!r) { Py_DECREF(m); return NULL; }
        if (!*bad) *bad = bad2;
        PyObject *res;
        if (o >= 0 && o + 20 <= n) {
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
    default: { /* the rarer types: rdata.present(rtype, msg, off, rdlen) -> (text, damage) */
        if (!*bufobj) {
            *bufobj = msg && PyBytes_CheckExact(msg) ? Py_NewRef(msg)
                                              : PyBytes_FromStringAndSize((const char *)b, n);
            if (!*bufobj) return NULL;
        }
        PyObject *a[4] = {PyLong_FromUnsignedLong(rtype), Py_NewRef(*bufobj), PyLong_FromSsize_t(off),
                          PyLong_FromSsize_t(rdlen)};
        PyObject *res = NULL;
        if (a[0] && a[2] && a[3]) res = PyObject_Vectorcall(present_cb, a, 4, NULL);
        for (int i = 0; i < 4; i++) Py_XDECREF(a[i]);
        if (!res) return NULL;
        if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(res, 0)) || !PyUnicode_Check(PyTuple_GET_ITEM(res, 1))) {
            Py_DECREF(res);
            PyErr_SetString(PyExc_TypeError, "_cwire: rdata.present must return (str, str)");
            return NULL;
        }
        PyObject *text = Py_NewRef(PyTuple_GET_ITEM(res, 0));
        if (PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(res, 1))) *bad = E_BAD_RDATA;
        Py_DECREF(res);
        return text;
    }
    }
    return hex_obj(b + off, rdlen < 512 ? rdlen : 512);
}

static PyObject *option_obj(unsigned code, PyObject *name, PyObject *text) {
    PyObject *v[N_OPTION] = {PyLong_FromLong(code), Py_NewRef(name), text};
    return build(EdnsOption, kw_option, v, N_OPTION);
}

/* The OPT record as Edns (wire._edns); *bad = E_BAD_RDATA for an option cut by the
 * rdata's end. NULL only for a Python error. */
static PyObject *edns_obj(const unsigned char *b, Py_ssize_t off, Py_ssize_t rdlen, unsigned cls,
                          uint32_t ttl, int *bad) {
    PyObject *ecs = NULL, *scope = NULL, *opts = PyList_New(0);
    if (!opts) return NULL;
    Py_ssize_t end = off + rdlen;
    *bad = 0;
    while (off < end) {
        if (off + 4 > end) { *bad = E_BAD_RDATA; break; }
        unsigned code = u16(b + off), ln = u16(b + off + 2);
        off += 4;
        if (off + (Py_ssize_t)ln > end) { *bad = E_BAD_RDATA; break; }
        const unsigned char *d = b + off;
        off += ln;
        PyObject *o;
        if (code == 8) { /* client subnet: "addr/source/scope" */
            unsigned fam = ln >= 4 ? u16(d) : 0;
            PyObject *text;
            if (fam == 1 || fam == 2) {
                unsigned char addr[16] = {0};
                Py_ssize_t al = ln - 4, cap = fam == 1 ? 4 : 16;
                memcpy(addr, d + 4, al < cap ? al : cap);
                char t[INET6_ADDRSTRLEN];
                if (!inet_ntop(fam == 1 ? AF_INET : AF_INET6, addr, t, sizeof t)) t[0] = 0;
                text = PyUnicode_FromFormat("%s/%u/%u", t, d[2], d[3]);
                if (!ecs) {
                    ecs = PyUnicode_FromFormat("%s/%u", t, d[2]);
                    scope = PyLong_FromLong(d[3]);
                    if (!ecs || !scope) { Py_XDECREF(text); goto fail; }
                }
            } else {
                text = hex_obj(d, ln);
            }
            o = option_obj(code, s_ecs, text);
        } else if (code == 10) { /* cookie: client (8 bytes), then server */
            o = option_obj(code, s_cookie, ln > 8 ? hex2_obj(d, 8, ln) : hex_obj(d, ln));
        } else if (code == 12) {
            o = option_obj(code, s_padding, PyUnicode_FromFormat("%u", ln));
        } else {
            o = PyObject_CallFunction(edns_option_cb, "Iy#", code, (const char *)d, (Py_ssize_t)ln);
        }
        if (!o) goto fail;
        int r = PyList_Append(opts, o);
        Py_DECREF(o);
        if (r < 0) goto fail;
    }
    PyObject *v[N_EDNS] = {PyLong_FromLong(cls), Py_NewRef(ttl & 0x8000 ? Py_True : Py_False),
                           PyLong_FromLong((ttl >> 16) & 0xFF), ecs ? ecs : Py_NewRef(Py_None),
                           scope ? scope : Py_NewRef(Py_None), opts, PyLong_FromLong(ttl & 0xFFFF),
                           PyLong_FromLong(ttl >> 24)};
    return build(Edns, kw_edns, v, N_EDNS);
fail:
    Py_XDECREF(ecs);
    Py_XDECREF(scope);
    Py_DECREF(opts);
    return NULL;
}

static int port_is(PyObject *p, long port) {
    if (!PyLong_CheckExact(p)) return 0;
    long v = PyLong_AsLong(p);
    if (v == -1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
    return v == port;
}

#define DAMAGE(k) do { if (!mal) mal = (k); } while (0)

/* Decode the message b[0:n] (n >= 12) into a DnsEvent with meta = (ts, transport,
 * ip_version, src_ip, src_port, dst_ip, dst_port); *mal_out = its damage kind (E_OK
 * when none; ev.malformed is set already). msg: the message as a Python object for
 * the rare-type callback (NULL: bytes are made from b when needed). NULL with an
 * exception set on a Python error. */
static PyObject *decode_msg(const unsigned char *b, Py_ssize_t n, PyObject *msg,
                            PyObject *const *meta, Py_ssize_t max_answers, int *mal_out) {
    PyObject *ev = NULL, *questions = NULL, *sec[3] = {NULL, NULL, NULL}, *edns = NULL, *bufobj = NULL;
    if (!present_cb) {
        PyErr_SetString(PyExc_RuntimeError, "_cwire: setup() was not called");
        return NULL;
    }
    unsigned mid = u16(b), flags = u16(b + 2), qd = u16(b + 4), an = u16(b + 6), ns = u16(b + 8),
             ar = u16(b + 10);
    int mdns = port_is(meta[4], MDNS_PORT) || port_is(meta[6], MDNS_PORT);
    unsigned long rcode = flags & 0xF;
    int mal = 0, bad;
    questions = PyList_New(0);
    sec[0] = PyList_New(0);
    if (!questions || !sec[0]) goto fail;
    Py_ssize_t off = 12, nx;
    for (unsigned i = 0; i < qd; i++) {
        PyObject *name = name_obj(b, n, off, &nx, &bad);
        if (!name) goto fail;
        if (bad) {
            DAMAGE(bad);
            if (nx < 0) { Py_DECREF(name); off = -1; break; }
        }
        off = nx;
        if (off + 4 > n) { Py_DECREF(name); DAMAGE(E_TRUNC_Q); off = -1; break; }
        unsigned qc = u16(b + off + 2);
        PyObject *qu = Py_False;
        if (mdns) { qu = qc & 0x8000 ? Py_True : Py_False; qc &= 0x7FFF; }
        if (PyList_GET_SIZE(questions) < max_answers) {
            PyObject *qv[N_QUESTION] = {name, PyLong_FromLong(u16(b + off)), PyLong_FromLong(qc),
                                        Py_NewRef(qu)};
            PyObject *q = build_with(&plan_question, Question, kw_question, qv, N_QUESTION);
            if (!q) goto fail;
            int r = PyList_Append(questions, q);
            Py_DECREF(q);
            if (r < 0) goto fail;
        } else {
            Py_DECREF(name);
        }
        off += 4;
        /* a damaged question is kept, with its type and class; after a pointer out of
         * the message, what follows is not known to be aligned (tshark stops too); a
         * name too long or a loop leaves the bytes in place whole: go on */
        if (bad && bad != E_TOO_LONG && bad != E_LOOP) { off = -1; break; }
    }
    unsigned counts[3] = {an, ns, ar};
    for (int s = 0; s < 3 && off >= 0; s++) {
        for (unsigned i = 0; i < counts[s]; i++) {
            if (off >= n) { DAMAGE(E_TRUNC_REC); off = -1; break; }
            PyObject *name = name_obj(b, n, off, &nx, &bad);
            if (!name) goto fail;
            if (bad) {
                DAMAGE(bad);
                if (nx < 0) { Py_DECREF(name); off = -1; break; }
            }
            off = nx;
            if (off + 10 > n) { Py_DECREF(name); DAMAGE(E_TRUNC_REC); off = -1; break; }
            unsigned rtype = u16(b + off), cls = u16(b + off + 2);
            uint32_t ttl = u32(b + off + 4);
            Py_ssize_t rdlen = u16(b + off + 8);
            off += 10;
            Py_ssize_t end = off + rdlen;
            if (rtype == T_OPT && s == 2 && !edns) {
                Py_DECREF(name);
                Py_ssize_t avail = n - off;
                edns = edns_obj(b, off, rdlen < avail ? rdlen : avail, cls, ttl, &bad);
                if (!edns) goto fail;
                rcode |= (unsigned long)(ttl >> 24) << 4;
                if (end > n) { DAMAGE(E_TRUNC_REC); off = -1; break; }
                if (bad) DAMAGE(bad);
                off = end;
                continue;
            }
            if (end > n) { Py_DECREF(name); DAMAGE(E_TRUNC_REC); off = -1; break; }
            if ((sec[s] ? PyList_GET_SIZE(sec[s]) : 0) < max_answers) {
                PyObject *data;
                if (!rdlen) data = Py_NewRef(s_empty);
                else if (rtype == 1 && rdlen == 4) data = ip_obj(AF_INET, b + off);
                else {
                    data = rdata_obj(b, n, rtype, off, rdlen, &bad, msg, &bufobj);
                    if (bad) DAMAGE(bad);
                }
                if (!data) { Py_DECREF(name); goto fail; }
                PyObject *cf = Py_False;
                if (mdns && rtype != T_OPT) { cf = cls & 0x8000 ? Py_True : Py_False; cls &= 0x7FFF; }
                PyObject *av[N_ANSWER] = {name, PyLong_FromLong(rtype), PyLong_FromUnsignedLong(ttl),
                                          data, PyLong_FromSsize_t(rdlen), PyLong_FromLong(cls),
                                          Py_NewRef(cf)};
                PyObject *a = build_with(&plan_answer, Answer, kw_answer, av, N_ANSWER);
                if (!a) goto fail;
                if (!sec[s] && !(sec[s] = PyList_New(0))) { Py_DECREF(a); goto fail; }
                int r = PyList_Append(sec[s], a);
                Py_DECREF(a);
                if (r < 0) goto fail;
            } else {
                Py_DECREF(name);
            }
            off = end;
        }
    }
    {
        PyObject *v[N_EVENT] = {
            Py_NewRef(meta[0]), Py_NewRef(meta[1]), Py_NewRef(meta[2]), Py_NewRef(meta[3]),
            Py_NewRef(meta[4]), Py_NewRef(meta[5]), Py_NewRef(meta[6]), PyLong_FromLong(mid),
            PyLong_FromLong(flags), PyLong_FromUnsignedLong(rcode), questions, sec[0],
            sec[1] ? sec[1] : Py_NewRef(empty_tuple), sec[2] ? sec[2] : Py_NewRef(empty_tuple),
            PyLong_FromLong(an), PyLong_FromLong(ns), PyLong_FromLong(ar), PyLong_FromSsize_t(n),
            edns ? edns : Py_NewRef(Py_None)};
        questions = edns = NULL; /* build() took them */
        sec[0] = sec[1] = sec[2] = NULL;
        ev = build_with(&plan_event, DnsEvent, kw_event, v, N_EVENT);
        if (!ev) goto fail;
    }
    if (mal && PyObject_SetAttr(ev, s_malformed, E_STR[mal]) < 0) goto fail;
    Py_XDECREF(bufobj);
    *mal_out = mal;
    return ev;
fail:
    Py_XDECREF(ev);
    Py_XDECREF(questions);
    for (int s = 0; s < 3; s++) Py_XDECREF(sec[s]);
    Py_XDECREF(edns);
    Py_XDECREF(bufobj);
    return NULL;
}

static PyObject *decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 8 || nargs > 9) {
        PyErr_SetString(PyExc_TypeError, "decode(buf, ts, transport, ip_version, src_ip, src_port, "
                                         "dst_ip, dst_port, max_answers=64)");
        return NULL;
    }
    if (!present_cb) {
        PyErr_SetString(PyExc_RuntimeError, "_cwire: setup() was not called");
        return NULL;
    }
    Py_ssize_t max_answers = 64;
    if (nargs == 9) {
        max_answers = PyLong_AsSsize_t(args[8]);
        if (max_answers == -1 && PyErr_Occurred()) return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t n = view.len;
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
    int mal;
    PyObject *ev = decode_msg(view.buf, n, args[0], args + 1, max_answers, &mal);
    PyBuffer_Release(&view);
    return ev;
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

/* setup(DnsEvent, Question, Answer, Edns, DnsParseError[, EdnsOption, present, edns_option
 *       [, plans]]): the classes to build and the rdata.py callbacks (kept from the last
 * call when left out); plans = (MISSING, event spec, question spec, answer spec), each
 * spec None or what plan_make takes: the classes then built slot by slot */
static PyObject *setup(PyObject *self, PyObject *args) {
    PyObject *a, *b, *c, *d, *e, *f = NULL, *pr = NULL, *eo = NULL, *plans = Py_None;
    if (!PyArg_ParseTuple(args, "OOOOO|OOOO", &a, &b, &c, &d, &e, &f, &pr, &eo, &plans)) return NULL;
    if (plans != Py_None && (!PyTuple_Check(plans) || PyTuple_GET_SIZE(plans) != 4)) {
        PyErr_SetString(PyExc_TypeError, "_cwire.setup: plans = (MISSING, event, question, answer)");
        return NULL;
    }
    if (!f) f = EdnsOption;
    if (!pr) pr = present_cb;
    if (!eo) eo = edns_option_cb;
    if (!f || !pr || !eo || !PyCallable_Check(pr) || !PyCallable_Check(eo)) {
        PyErr_SetString(PyExc_TypeError, "_cwire.setup: EdnsOption, present and edns_option are needed");
        return NULL;
    }
    PyObject *ke = NULL, *kq = NULL, *ka = NULL, *kd = NULL, *ko = NULL;
    if (!(ke = field_names(a, EVENT_FIELDS)) || !(kq = field_names(b, QUESTION_FIELDS)) ||
        !(ka = field_names(c, ANSWER_FIELDS)) || !(kd = field_names(d, EDNS_FIELDS)) ||
        !(ko = field_names(f, OPTION_FIELDS))) {
        Py_XDECREF(ke); Py_XDECREF(kq); Py_XDECREF(ka); Py_XDECREF(kd); Py_XDECREF(ko);
        return NULL;
    }
    if (plans == Py_None) {
        plan_clear(&plan_event);
        plan_clear(&plan_question);
        plan_clear(&plan_answer);
    } else {
        PyObject *missing = PyTuple_GET_ITEM(plans, 0);
        if (plan_make(&plan_event, a, ke, N_EVENT, PyTuple_GET_ITEM(plans, 1), missing) < 0 ||
            plan_make(&plan_question, b, kq, N_QUESTION, PyTuple_GET_ITEM(plans, 2), missing) < 0 ||
            plan_make(&plan_answer, c, ka, N_ANSWER, PyTuple_GET_ITEM(plans, 3), missing) < 0) {
            Py_XDECREF(ke); Py_XDECREF(kq); Py_XDECREF(ka); Py_XDECREF(kd); Py_XDECREF(ko);
            return NULL;
        }
    }
    Py_XSETREF(kw_event, ke);
    Py_XSETREF(kw_question, kq);
    Py_XSETREF(kw_answer, ka);
    Py_XSETREF(kw_edns, kd);
    Py_XSETREF(kw_option, ko);
    Py_XSETREF(DnsEvent, Py_NewRef(a));
    Py_XSETREF(Question, Py_NewRef(b));
    Py_XSETREF(Answer, Py_NewRef(c));
    Py_XSETREF(Edns, Py_NewRef(d));
    Py_XSETREF(DnsParseError, Py_NewRef(e));
    Py_XSETREF(EdnsOption, Py_NewRef(f));
    Py_XSETREF(present_cb, Py_NewRef(pr));
    Py_XSETREF(edns_option_cb, Py_NewRef(eo));
    Py_RETURN_NONE;
}

/* What other extensions call (detector/capture/_cframe.c decodes the DNS messages of
 * whole captures with it), as the capsule detector.dns._cwire._C_API. The struct is
 * declared the same in both files; a change to it bumps CWIRE_API_VERSION, which
 * _cframe checks on import. */
typedef struct {
    int version;
    PyObject *(*decode_msg)(const unsigned char *b, Py_ssize_t n, PyObject *msg,
                            PyObject *const *meta, Py_ssize_t max_answers, int *mal_out);
    const char *const *kinds; /* damage kind names by number ("" for E_OK) */
    int nkinds;
} CwireApi;
#define CWIRE_API_VERSION 1
static CwireApi c_api = {CWIRE_API_VERSION, decode_msg, E_NAMES, E_COUNT};

/* planned() -> the classes built slot by slot (see plan_t), for tests */
static PyObject *planned(PyObject *self, PyObject *unused) {
    PyObject *out = PyList_New(0);
    const plan_t *ps[3] = {&plan_event, &plan_question, &plan_answer};
    for (int i = 0; out && i < 3; i++)
        if (ps[i]->tp && PyList_Append(out, (PyObject *)ps[i]->tp) < 0) Py_CLEAR(out);
    return out;
}

static PyMethodDef methods[] = {
    {"planned", planned, METH_NOARGS, "planned() -> the classes built slot by slot, not by __init__"},
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL,
     "decode(buf, ts, transport, ip_version, src_ip, src_port, dst_ip, dst_port, max_answers=64)"
     " -> DnsEvent; the C twin of detector.dns.wire.decode"},
    {"setup", setup, METH_VARARGS,
     "setup(DnsEvent, Question, Answer, Edns, DnsParseError[, EdnsOption, present, edns_option"
     "[, plans]])"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_cwire", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cwire(void) {
    PyObject *m = PyModule_Create(&mod);
    if (!m) return NULL;
    s_malformed = PyUnicode_InternFromString("malformed");
    s_empty = PyUnicode_InternFromString("");
    s_ecs = PyUnicode_InternFromString("ECS");
    s_cookie = PyUnicode_InternFromString("COOKIE");
    s_padding = PyUnicode_InternFromString("PADDING");
    empty_tuple = PyTuple_New(0);
    for (int i = 0; i < E_COUNT; i++) E_STR[i] = PyUnicode_InternFromString(E_NAMES[i]);
    PyObject *cap = PyCapsule_New(&c_api, "detector.dns._cwire._C_API", NULL);
    if (!cap || PyModule_AddObject(m, "_C_API", cap) < 0) {
        Py_XDECREF(cap);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
