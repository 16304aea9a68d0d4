/*
 * _cdga: the DGA feature extractor of detector/detect/dga/features.py and the
 * gradient-boosted forest walk of scikit-learn's HistGradientBoosting, in C.
 *
 * Same features as features.extract_parts (the numpy version stays the
 * reference and the fallback; tests/test_dga.py checks that both agree on real
 * and random names), and the same raw score as clf.decision_function on
 * numerical splits. Why: numpy pays a fixed cost per array operation, and the
 * pipeline scores small batches, so per-name C code is 10-50x cheaper there.
 *
 * No numpy C API: arrays come in through the buffer protocol, so the module
 * builds with nothing but Python's headers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAXLEN 63
#define MINWORD 3
#define MAXWORD 12
#define A 39
#define NF 25
#define NG_MAX 5   /* character n-grams of 1..NG_MAX, over the label framed by 39 */
#define NG_BASE 40
#define NG_BITS 19 /* hashed into 2^NG_BITS weights */
#define BITS 22
#define P 1000003ULL
#define GOLD 0x9E3779B97F4A7C15ULL

static unsigned char MAP[128];
static unsigned char VOWEL[A], LETTER[A], DIGIT[A], HEX[A];
static double LOG_UNIFORM;

static void init_tables(void) {
    const char *alpha = "abcdefghijklmnopqrstuvwxyz0123456789-";
    memset(MAP, 38, sizeof MAP);
    for (int i = 0; alpha[i]; i++) MAP[(unsigned char)alpha[i]] = (unsigned char)(i + 1);
    MAP['_'] = 37;
    const char *v = "aeiouy";
    for (int i = 0; v[i]; i++) VOWEL[v[i] - 96] = 1;
    for (int i = 1; i <= 26; i++) LETTER[i] = 1;
    for (int i = 27; i <= 36; i++) DIGIT[i] = HEX[i] = 1;
    for (int i = 1; i <= 6; i++) HEX[i] = 1;
    LOG_UNIFORM = log(1.0 / 37);
}

/* A label as alphabet indices, as features.encode does: at most MAXLEN code
 * points, anything outside the alphabet (non-ASCII included) is 38. */
static int encode(PyObject *s, unsigned char *m) {
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "labels must be str");
        return -1;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (n > MAXLEN) n = MAXLEN;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        m[i] = c < 128 ? MAP[c] : 38;
    }
    return (int)n;
}

typedef struct {
    const float *bigram, *trigram;
    const unsigned char *seen, *t1, *t2; /* t1, t2: the word bitmaps as one bit per slot */
} tables_t;

/* The word bitmaps come as one byte per slot (2 x 4 MiB, mostly cache misses);
 * as bits they take 2 x 512 KiB. The bits of the last pair of arrays seen are
 * kept, with a reference to them so their memory cannot be reused by other
 * arrays (the tables are never written once built). */
static PyObject *bm_owner[2];
static const void *bm_ptr[2];
static unsigned char *bm_bits; /* 2 << (BITS - 3) bytes */

static const unsigned char *word_bits(const Py_buffer *b1, const Py_buffer *b2) {
    if (bm_bits && b1->obj && b2->obj && bm_owner[0] == b1->obj && bm_owner[1] == b2->obj &&
        bm_ptr[0] == b1->buf && bm_ptr[1] == b2->buf)
        return bm_bits;
    if (!bm_bits) {
        bm_bits = PyMem_Malloc((size_t)2 << (BITS - 3));
        if (!bm_bits) {
            PyErr_NoMemory();
            return NULL;
        }
    }
    memset(bm_bits, 0, (size_t)2 << (BITS - 3));
    const unsigned char *t[2] = {b1->buf, b2->buf};
    for (int k = 0; k < 2; k++) {
        unsigned char *o = bm_bits + ((size_t)k << (BITS - 3));
        for (size_t i = 0; i < ((size_t)1 << BITS); i++) o[i >> 3] |= (unsigned char)((t[k][i] != 0) << (i & 7));
    }
    Py_XDECREF(bm_owner[0]);
    Py_XDECREF(bm_owner[1]);
    bm_owner[0] = b1->obj;
    bm_owner[1] = b2->obj;
    Py_XINCREF(bm_owner[0]);
    Py_XINCREF(bm_owner[1]);
    bm_ptr[0] = b1->obj ? b1->buf : NULL; /* no owner: never reused */
    bm_ptr[1] = b2->obj ? b2->buf : NULL;
    return bm_bits;
}

static void word_cover(const unsigned char *m, int len, const tables_t *t, float *out) {
    /* hit[k][i]: m[i:i+k] is (probably) a word, by the 2-probe bitmap filter */
    static const uint64_t mask = (1ULL << BITS) - 1;
    unsigned char hit[MAXWORD + 1][MAXLEN];
    uint64_t h[MAXLEN];
    memset(h, 0, sizeof h);
    for (int k = 1; k <= MAXWORD && k <= len; k++) {
        uint64_t kmix = (uint64_t)k * GOLD;
        for (int i = 0; i + k <= len; i++) {
            h[i] = h[i] * P + (uint64_t)m[i + k - 1] + 1;
            if (k >= MINWORD) {
                uint64_t hk = h[i] + kmix;
                uint64_t a = hk & mask, b = (hk >> 40) & mask;
                hit[k][i] = (unsigned char)((t->t1[a >> 3] >> (a & 7)) & (t->t2[b >> 3] >> (b & 7)) & 1);
            }
        }
    }
    int16_t best[MAXLEN + 1], nw[MAXLEN + 1];
    unsigned char full[MAXLEN + 1];
    int longest = 0, letters = 0;
    best[0] = nw[0] = 0;
    full[0] = 1;
    for (int j = 1; j <= len; j++) {
        int sep = !LETTER[m[j - 1]];
        letters += !sep;
        int b = best[j - 1], c = nw[j - 1];
        int f = full[j - 1] && sep;
        for (int k = MINWORD; k <= MAXWORD && k <= j; k++) {
            int i = j - k;
            if (!hit[k][i]) continue;
            int cand = best[i] + k;
            if (cand > b) {
                b = cand;
                c = nw[i] + 1;
            }
            f |= full[i];
            if (k > longest) longest = k;
        }
        best[j] = (int16_t)b;
        nw[j] = (int16_t)c;
        full[j] = (unsigned char)f;
    }
    out[0] = (float)((double)best[len] / (letters > 0 ? letters : 1));
    out[1] = nw[len];
    out[2] = full[len] && len > 0;
    out[3] = (float)longest;
}

static int max_run(const unsigned char *m, int len, const unsigned char *cls, int vowel_cons) {
    int run = 0, best = 0;
    for (int i = 0; i < len; i++) {
        int in = vowel_cons == 2 ? (LETTER[m[i]] && !VOWEL[m[i]]) : cls[m[i]];
        run = in ? run + 1 : 0;
        if (run > best) best = run;
    }
    return best;
}

/* numpy's float32 pairwise summation (numpy/core/src/umath/loops_utils.h) */
static float pairwise_sum(const float *a, int n) {
    if (n < 8) {
        float res = -0.0f;
        for (int i = 0; i < n; i++) res += a[i];
        return res;
    }
    if (n <= 128) {
        float r[8];
        int i;
        for (i = 0; i < 8; i++) r[i] = a[i];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    int n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

static void char_features(const unsigned char *m, int len, const tables_t *t, float *X) {
    double L = len > 0 ? len : 1;
    int counts[A] = {0};
    int nv = 0, nc = 0, nd = 0, nh = 0, nhex = 0, sw = 0;
    for (int i = 0; i < len; i++) {
        unsigned char c = m[i];
        counts[c]++;
        nv += VOWEL[c];
        nc += LETTER[c] && !VOWEL[c];
        nd += DIGIT[c];
        nh += c == 37;
        nhex += HEX[c];
        if (i > 0 && ((LETTER[c] && DIGIT[m[i - 1]]) || (DIGIT[c] && LETTER[m[i - 1]]))) sw++;
    }
    double ent = 0;
    int uniq = 0;
    for (int c = 1; c < A; c++) {
        if (!counts[c]) continue;
        uniq++;
        double p = counts[c] / L;
        ent -= p * log2(p);
    }
    X[0] = (float)len;
    X[1] = (float)ent;
    X[2] = (float)(uniq / L);
    X[3] = (float)(nv / L);
    X[4] = (float)(nc / L);
    X[5] = (float)(nd / L);
    X[6] = (float)nh;
    X[7] = (float)max_run(m, len, NULL, 2);
    X[8] = (float)max_run(m, len, VOWEL, 0);
    X[9] = (float)max_run(m, len, DIGIT, 0);
    X[10] = (float)sw;
    X[11] = (nhex == len && len >= 8 && nd > 0) ? 1.0f : 0.0f;
    /* n-grams over the label padded with 0 at both edges */
    unsigned char pad[MAXLEN + 2];
    pad[0] = 0;
    memcpy(pad + 1, m, (size_t)len);
    pad[len + 1] = 0;
    /* Sums in float32 over the numpy version's row width (its length bucket),
     * in numpy's pairwise order, so the features agree bit for bit: a split
     * threshold of the forest can fall between two roundings of one sum. */
    int width = len <= 12 ? 12 : len <= 20 ? 20 : len <= 32 ? 32 : MAXLEN;
    float bi[MAXLEN + 1] = {0}, tri[MAXLEN] = {0};
    float tmin = 0;
    int unseen = 0;
    for (int j = 0; j <= len; j++) bi[j] = t->bigram[pad[j] * A + pad[j + 1]];
    for (int j = 0; j < len; j++) {
        int idx = pad[j] * A * A + pad[j + 1] * A + pad[j + 2];
        float v = t->trigram[idx];
        tri[j] = v;
        if (v < tmin) tmin = v;
        unseen += !t->seen[idx];
    }
    double bll = pairwise_sum(bi, width + 1), tll = pairwise_sum(tri, width);
    double lm = len > 0 ? len : 1;
    X[12] = (float)(bll / (len + 1));
    X[13] = (float)(tll / lm);
    X[14] = tmin;
    X[15] = (float)(unseen / lm);
    X[22] = (float)(tll - (len + 1) * LOG_UNIFORM);
    X[23] = (float)(bll - (len + 1) * LOG_UNIFORM);
}

/* The hashed character n-gram model's logit: bias + the sum of the weights of
 * every 1..NG_MAX-gram of the label framed by a boundary symbol (39), counted
 * with repeats, summed in double in (n, position) order, as
 * features.ngram_logits does, so both agree bit for bit. */
static double ngram_logit(const unsigned char *m, int len, const float *w, double bias) {
    unsigned char s[MAXLEN + 2];
    s[0] = 39;
    memcpy(s + 1, m, (size_t)len);
    s[len + 1] = 39;
    int L = len + 2;
    /* the slots first (prefetched: the weights are 2 MiB), then the sum in order */
    uint32_t slot[NG_MAX * (MAXLEN + 2)];
    int ns = 0;
    for (int k = 1; k <= NG_MAX; k++) {
        for (int i = 0; i + k <= L; i++) {
            uint64_t id = 0;
            for (int j = 0; j < k; j++) id = id * NG_BASE + s[i + j];
            uint64_t h = (id + ((uint64_t)k << 40)) * GOLD;
            slot[ns] = (uint32_t)(h >> (64 - NG_BITS));
            __builtin_prefetch(w + slot[ns]);
            ns++;
        }
    }
    double acc = 0.0;
    for (int i = 0; i < ns; i++) acc += (double)w[slot[i]];
    return acc + bias;
}

static int get_buf(PyObject *o, Py_buffer *b, Py_ssize_t need, int writable, const char *what) {
    if (PyObject_GetBuffer(o, b, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS : PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (b->len < need) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, need %zd", what, b->len, need);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

/* features(labels, subs, bigram, trigram, seen, t1, t2, ngram_w, ngram_bias, out) */
static PyObject *features(PyObject *self, PyObject *args) {
    PyObject *labels, *subs, *obig, *otri, *oseen, *ot1, *ot2, *ong, *oout;
    double ng_bias;
    if (!PyArg_ParseTuple(args, "O!O!OOOOOOdO", &PyList_Type, &labels, &PyList_Type, &subs,
                          &obig, &otri, &oseen, &ot1, &ot2, &ong, &ng_bias, &oout))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(labels);
    if (PyList_GET_SIZE(subs) != n) {
        PyErr_SetString(PyExc_ValueError, "labels and subs differ in length");
        return NULL;
    }
    Py_buffer bb, tb, sb, b1 = {0}, b2 = {0}, bg = {0}, ob;
    int have_words = ot1 != Py_None && ot2 != Py_None;
    int have_ng = ong != Py_None;
    if (get_buf(obig, &bb, A * A * 4, 0, "bigram") < 0) return NULL;
    if (get_buf(otri, &tb, A * A * A * 4, 0, "trigram") < 0) goto e1;
    if (get_buf(oseen, &sb, A * A * A, 0, "trigram_seen") < 0) goto e2;
    if (have_words) {
        if (get_buf(ot1, &b1, 1 << BITS, 0, "t1") < 0) goto e3;
        if (get_buf(ot2, &b2, 1 << BITS, 0, "t2") < 0) goto e4;
    }
    if (have_ng && get_buf(ong, &bg, (Py_ssize_t)4 << NG_BITS, 0, "ngram weights") < 0) goto e5;
    if (get_buf(oout, &ob, n * NF * 4, 1, "out") < 0) goto e5g;
    const unsigned char *bits = NULL;
    if (have_words && !(bits = word_bits(&b1, &b2))) goto e6;
    tables_t t = {bb.buf, tb.buf, sb.buf, bits, bits ? bits + ((size_t)1 << (BITS - 3)) : NULL};
    float *X = ob.buf;
    unsigned char m[MAXLEN];
    for (Py_ssize_t r = 0; r < n; r++) {
        float *x = X + r * NF;
        memset(x, 0, NF * sizeof(float));
        int len = encode(PyList_GET_ITEM(labels, r), m);
        if (len < 0) goto e6;
        char_features(m, len, &t, x);
        if (have_words && len > 0) word_cover(m, len, &t, x + 16);
        if (have_ng) x[24] = (float)ngram_logit(m, len, bg.buf, ng_bias);
        PyObject *s = PyList_GET_ITEM(subs, r);
        if (!PyUnicode_Check(s)) {
            PyErr_SetString(PyExc_TypeError, "subs must be str");
            goto e6;
        }
        Py_ssize_t sl = PyUnicode_GET_LENGTH(s);
        if (sl) {
            int kind = PyUnicode_KIND(s);
            const void *d = PyUnicode_DATA(s);
            int nd = 0;
            for (Py_ssize_t i = 0; i < sl; i++) nd += PyUnicode_READ(kind, d, i) == '.';
            x[20] = (float)(nd + 1);
        }
        x[21] = (float)sl;
    }
    PyBuffer_Release(&ob);
    if (have_ng) PyBuffer_Release(&bg);
    if (have_words) {
        PyBuffer_Release(&b2);
        PyBuffer_Release(&b1);
    }
    PyBuffer_Release(&sb);
    PyBuffer_Release(&tb);
    PyBuffer_Release(&bb);
    Py_RETURN_NONE;
e6:
    PyBuffer_Release(&ob);
e5g:
    if (have_ng) PyBuffer_Release(&bg);
e5:
    if (have_words) PyBuffer_Release(&b2);
e4:
    if (have_words) PyBuffer_Release(&b1);
e3:
    PyBuffer_Release(&sb);
e2:
    PyBuffer_Release(&tb);
e1:
    PyBuffer_Release(&bb);
    return NULL;
}

/* One tree node, packed by model.py (16 bytes). A leaf points to itself, so
 * every row takes exactly `depth` steps per tree: no data-dependent branch,
 * and the rows of a block walk in parallel in the CPU. `thr` is the largest
 * float32 not above scikit-learn's float64 threshold, so x <= thr holds
 * exactly when scikit-learn's (double)x <= threshold does. */
typedef struct {
    float thr;
    int32_t left, right;
    uint8_t feat, missing_left;
    uint16_t pad;
} node_t;

#define BLOCK 32

/* The self-looping walk of rows r0..r0+nb-1 (nb <= BLOCK) through every tree:
 * the reference, and the path of rows holding a NaN (see forest_qs). */
static void walk_block(const float *xb, int nb, const node_t *nd, const int32_t *roots,
                       const int32_t *depths, Py_ssize_t ntrees, const double *val, double base,
                       double *out) {
    double sum[BLOCK];
    int32_t idx[BLOCK];
    for (int r = 0; r < nb; r++) sum[r] = base;
    for (Py_ssize_t t = 0; t < ntrees; t++) {
        for (int r = 0; r < nb; r++) idx[r] = roots[t];
        for (int d = 0; d < depths[t]; d++) {
            int32_t moved = 0;
            for (int r = 0; r < nb; r++) {
                const node_t *q = nd + idx[r];
                float v = xb[r * NF + q->feat];
                int left = (v <= q->thr) | (isnan(v) & q->missing_left);
                int32_t next = left ? q->left : q->right;
                moved |= next ^ idx[r];
                idx[r] = next;
            }
            if (!moved) break; /* every row of the block is at a leaf */
        }
        for (int r = 0; r < nb; r++) sum[r] += val[idx[r]];
    }
    for (int r = 0; r < nb; r++) out[r] = sum[r];
}

static int check_forest(const node_t *nd, Py_ssize_t nodes, const int32_t *roots, const int32_t *depths,
                        Py_ssize_t ntrees) {
    for (Py_ssize_t t = 0; t < ntrees; t++)
        if (roots[t] < 0 || roots[t] >= nodes || depths[t] < 0 || depths[t] > 64) {
            PyErr_SetString(PyExc_ValueError, "forest: root or depth out of range");
            return -1;
        }
    for (Py_ssize_t i = 0; i < nodes; i++)
        if (nd[i].feat >= NF || nd[i].left < 0 || nd[i].left >= nodes || nd[i].right < 0 ||
            nd[i].right >= nodes) {
            PyErr_SetString(PyExc_ValueError, "forest: bad node");
            return -1;
        }
    return 0;
}

/* forest(X, nodes, roots, depths, leaf_values, baseline, out)
 * X: float32 (n, NF); roots, depths: int32 per tree; leaf_values: float64 per node.
 * out[r] = baseline + sum of the leaf values reached, as decision_function. */
static PyObject *forest(PyObject *self, PyObject *args) {
    PyObject *oX, *on, *oro, *ode, *ov, *oout;
    double base;
    if (!PyArg_ParseTuple(args, "OOOOOdO", &oX, &on, &oro, &ode, &ov, &base, &oout)) return NULL;
    Py_buffer bx, bn, bro, bde, bv, bo;
    PyObject *res = NULL;
    if (get_buf(oX, &bx, 0, 0, "X") < 0) return NULL;
    Py_ssize_t n = bx.len / (NF * 4);
    if (get_buf(on, &bn, 0, 0, "nodes") < 0) goto x0;
    Py_ssize_t nodes = bn.len / (Py_ssize_t)sizeof(node_t);
    if (get_buf(oro, &bro, 0, 0, "roots") < 0) goto x1;
    Py_ssize_t ntrees = bro.len / 4;
    if (get_buf(ode, &bde, ntrees * 4, 0, "depths") < 0) goto x2;
    if (get_buf(ov, &bv, nodes * 8, 0, "leaf_values") < 0) goto x3;
    if (get_buf(oout, &bo, n * 8, 1, "out") < 0) goto x4;
    {
        const float *X = bx.buf;
        const node_t *nd = bn.buf;
        const int32_t *roots = bro.buf, *depths = bde.buf;
        const double *val = bv.buf;
        double *out = bo.buf;
        if (check_forest(nd, nodes, roots, depths, ntrees) < 0) goto x5;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t r0 = 0; r0 < n; r0 += BLOCK) {
            int nb = (int)(n - r0 < BLOCK ? n - r0 : BLOCK);
            walk_block(X + r0 * NF, nb, nd, roots, depths, ntrees, val, base, out + r0);
        }
        Py_END_ALLOW_THREADS
        res = Py_None;
        Py_INCREF(res);
    }
x5:
    PyBuffer_Release(&bo);
x4:
    PyBuffer_Release(&bv);
x3:
    PyBuffer_Release(&bde);
x2:
    PyBuffer_Release(&bro);
x1:
    PyBuffer_Release(&bn);
x0:
    PyBuffer_Release(&bx);
    return res;
}

/* ---- the same forest by leaf bitvectors (QuickScorer, Lucchese et al. 2015) ----
 *
 * Each tree has at most 32 leaves, numbered left to right. A row's exit leaf is
 * the leftmost leaf not in the left subtree of any node the row goes right at
 * (x > thr; the row's value is not NaN). So per tree start from all ones, and
 * for every node whose test is false AND in a mask clearing its left subtree's
 * leaves; the lowest bit left is the exit leaf. The nodes of all trees are
 * sorted per feature by threshold, so a block of rows stops scanning a feature
 * at the first threshold no row of the block exceeds. No data-dependent
 * branch per node, and 8 rows per vector compare. A row with a NaN anywhere
 * takes the walk above (NaN goes where missing_left says, per node).
 * The leaf values are added in tree order from the baseline, as
 * scikit-learn's decision_function does, so the sum is the same double. */
typedef struct {
    int32_t ntrees, ninner;
    int32_t fstart[NF + 1]; /* inner nodes of feature f: fstart[f] .. fstart[f+1]-1 */
    /* followed by: float thr[ninner]; uint32 mask[ninner]; int32 tree[ninner];
     * double leafval[ntrees * 32] */
} qs_t;

#define QS_THR(q) ((const float *)((const char *)(q) + sizeof(qs_t)))
#define QS_MASK(q) ((const uint32_t *)(QS_THR(q) + (q)->ninner))
#define QS_TREE(q) ((const int32_t *)(QS_MASK(q) + (q)->ninner))
#define QS_VAL(q) ((const double *)((const char *)(q) + sizeof(qs_t) + (size_t)(q)->ninner * 12 + \
                                    (((size_t)(q)->ninner * 12) % 8 ? 4 : 0)))

typedef struct { float thr; uint32_t mask; int32_t tree; int32_t feat; } qnode_t;

static int qnode_cmp(const void *a, const void *b) {
    const qnode_t *x = a, *y = b;
    if (x->feat != y->feat) return x->feat < y->feat ? -1 : 1;
    if (x->thr != y->thr) return x->thr < y->thr ? -1 : 1;
    if (x->tree != y->tree) return x->tree < y->tree ? -1 : 1;
    return 0;
}

/* Number the leaves under node i from *next; set lo/hi leaf range of node i.
 * Returns -1 on a malformed tree (a cycle, too deep, more than 32 leaves). */
static int qs_number(const node_t *nd, int32_t i, int depth, int *next, int32_t *lo, int32_t *hi,
                     unsigned char *seen) {
    if (depth > 64 || seen[i]) return -1;
    seen[i] = 1;
    const node_t *q = nd + i;
    if (q->left == i && q->right == i) { /* a leaf points to itself */
        if (*next >= 32) return -1;
        lo[i] = *next;
        hi[i] = ++*next;
        return 0;
    }
    if (q->left == i || q->right == i) return -1;
    if (qs_number(nd, q->left, depth + 1, next, lo, hi, seen) < 0) return -1;
    if (qs_number(nd, q->right, depth + 1, next, lo, hi, seen) < 0) return -1;
    lo[i] = lo[q->left];
    hi[i] = hi[q->right];
    return 0;
}

/* forest_pack(nodes, roots, depths, leaf_values) -> bytes for forest_qs, or None
 * when a tree has more than 32 leaves (the walk is the only path then). */
static PyObject *forest_pack(PyObject *self, PyObject *args) {
    PyObject *on, *oro, *ode, *ov;
    if (!PyArg_ParseTuple(args, "OOOO", &on, &oro, &ode, &ov)) return NULL;
    Py_buffer bn, bro, bde, bv;
    PyObject *res = NULL;
    if (get_buf(on, &bn, 0, 0, "nodes") < 0) return NULL;
    Py_ssize_t nodes = bn.len / (Py_ssize_t)sizeof(node_t);
    if (get_buf(oro, &bro, 0, 0, "roots") < 0) goto p1;
    Py_ssize_t ntrees = bro.len / 4;
    if (get_buf(ode, &bde, ntrees * 4, 0, "depths") < 0) goto p2;
    if (get_buf(ov, &bv, nodes * 8, 0, "leaf_values") < 0) goto p3;
    {
        const node_t *nd = bn.buf;
        const int32_t *roots = bro.buf, *depths = bde.buf;
        const double *val = bv.buf;
        if (check_forest(nd, nodes, roots, depths, ntrees) < 0) goto p4;
        if (ntrees > (1 << 24) || nodes > (1 << 28)) {
            PyErr_SetString(PyExc_ValueError, "forest_pack: forest too large");
            goto p4;
        }
        int32_t *lo = PyMem_Malloc((size_t)(nodes ? nodes : 1) * 8);
        unsigned char *seen = PyMem_Calloc((size_t)(nodes ? nodes : 1), 1);
        qnode_t *qn = PyMem_Malloc((size_t)(nodes ? nodes : 1) * sizeof(qnode_t));
        double *lv = PyMem_Calloc((size_t)(ntrees ? ntrees : 1) * 32, sizeof(double));
        if (!lo || !seen || !qn || !lv) {
            PyErr_NoMemory();
            goto p5;
        }
        int32_t *hi = lo + nodes;
        Py_ssize_t ni = 0;
        int ok = 1;
        for (Py_ssize_t t = 0; t < ntrees && ok; t++) {
            int next = 0;
            /* a tree's nodes are reached from its root only: a shared node is malformed */
            if (qs_number(nd, roots[t], 0, &next, lo, hi, seen) < 0) {
                ok = 0;
                break;
            }
            /* a second walk to emit nodes and leaf values: iterative over the tree */
            int32_t stack[80];
            int sp = 0;
            stack[sp++] = roots[t];
            while (sp) {
                int32_t i = stack[--sp];
                const node_t *q = nd + i;
                if (q->left == i) {
                    lv[t * 32 + lo[i]] = val[i];
                    continue;
                }
                int32_t L = q->left;
                uint32_t leftbits = (uint32_t)((hi[L] - lo[L] == 32) ? 0xffffffffu
                                               : (((1u << (hi[L] - lo[L])) - 1u) << lo[L]));
                qn[ni].thr = q->thr;
                qn[ni].mask = ~leftbits;
                qn[ni].tree = (int32_t)t;
                qn[ni].feat = q->feat;
                ni++;
                if (sp + 2 > 80) {
                    ok = 0;
                    break;
                }
                stack[sp++] = q->right;
                stack[sp++] = L;
            }
        }
        if (!ok) {
            res = Py_None;
            Py_INCREF(res);
            goto p5;
        }
        qsort(qn, (size_t)ni, sizeof(qnode_t), qnode_cmp);
        size_t head = sizeof(qs_t) + (size_t)ni * 12;
        size_t padb = head % 8 ? 4 : 0;
        size_t total = head + padb + (size_t)ntrees * 32 * sizeof(double);
        res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
        if (!res) goto p5;
        char *buf = PyBytes_AS_STRING(res);
        memset(buf, 0, total);
        qs_t *qs = (qs_t *)buf;
        qs->ntrees = (int32_t)ntrees;
        qs->ninner = (int32_t)ni;
        float *thr = (float *)(buf + sizeof(qs_t));
        uint32_t *mask = (uint32_t *)(thr + ni);
        int32_t *tree = (int32_t *)(mask + ni);
        int f = 0;
        qs->fstart[0] = 0;
        for (Py_ssize_t j = 0; j < ni; j++) {
            while (f < qn[j].feat) qs->fstart[++f] = (int32_t)j;
            thr[j] = qn[j].thr;
            mask[j] = qn[j].mask;
            tree[j] = qn[j].tree;
        }
        while (f < NF) qs->fstart[++f] = (int32_t)ni;
        memcpy((char *)QS_VAL(qs), lv, (size_t)ntrees * 32 * sizeof(double));
    p5:
        PyMem_Free(lo);
        PyMem_Free(seen);
        PyMem_Free(qn);
        PyMem_Free(lv);
    }
p4:
    PyBuffer_Release(&bv);
p3:
    PyBuffer_Release(&bde);
p2:
    PyBuffer_Release(&bro);
p1:
    PyBuffer_Release(&bn);
    return res;
}

typedef float v8f __attribute__((vector_size(64)));
typedef uint32_t v8u __attribute__((vector_size(64)));
#define VL 16
#define QW 2               /* vectors of 8 rows per block */
#define QB (VL * QW)        /* rows per block */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define QS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define QS_CLONES
#endif

/* Exit-leaf bitvectors of rows X[0..nb-1] (nb <= QB), v: ntrees * QW vectors. */
QS_CLONES
static void qs_block(const qs_t *qs, const float *X, int nb, v8u *v, double base, double *out) {
    const float *thr = QS_THR(qs);
    const uint32_t *mask = QS_MASK(qs);
    const int32_t *tree = QS_TREE(qs);
    const double *lv = QS_VAL(qs);
    int32_t T = qs->ntrees;
    v8u ones;
    for (int l = 0; l < VL; l++) ones[l] = 0xffffffffu;
    for (int32_t t = 0; t < T * QW; t++) v[t] = ones;
    for (int f = 0; f < NF; f++) {
        int32_t j = qs->fstart[f], end = qs->fstart[f + 1];
        if (j == end) continue;
        v8f x[QW];
        float xmax = -INFINITY;
        for (int w = 0; w < QW; w++)
            for (int l = 0; l < VL; l++) {
                int r = w * VL + l;
                float a = r < nb ? X[r * NF + f] : -INFINITY;
                x[w][l] = a;
                if (a > xmax) xmax = a;
            }
        for (; j < end; j++) {
            float th = thr[j];
            if (!(th < xmax)) break; /* thresholds ascend: no row goes right from here */
            v8u m = (v8u){0} + mask[j];
            v8u *vt = v + (size_t)tree[j] * QW;
            for (int w = 0; w < QW; w++) {
                v8u right = (v8u)(x[w] > th);
                vt[w] &= m | ~right;
            }
        }
    }
    /* tree-major, so the additions of different rows overlap (each row's own
     * sum still runs in tree order) */
    double s[QB];
    for (int r = 0; r < QB; r++) s[r] = base;
    for (int32_t t = 0; t < T; t++) {
        const v8u *vt = v + (size_t)t * QW;
        const double *lt = lv + (size_t)t * 32;
        for (int w = 0; w < QW; w++)
            for (int l = 0; l < VL; l++) {
                uint32_t b = vt[w][l];
                s[w * VL + l] += lt[b ? __builtin_ctz(b) : 0];
            }
    }
    for (int r = 0; r < nb; r++) out[r] = s[r];
}

/* forest_qs(X, packed, nodes, roots, depths, leaf_values, baseline, out): as forest(),
 * by forest_pack's bitvectors; nodes..leaf_values walk the rows holding a NaN. */
static PyObject *forest_qs(PyObject *self, PyObject *args) {
    PyObject *oX, *opk, *on, *oro, *ode, *ov, *oout;
    double base;
    if (!PyArg_ParseTuple(args, "OSOOOOdO", &oX, &opk, &on, &oro, &ode, &ov, &base, &oout)) return NULL;
    const qs_t *qs = (const qs_t *)PyBytes_AS_STRING(opk);
    Py_ssize_t plen = PyBytes_GET_SIZE(opk);
    if ((size_t)plen < sizeof(qs_t) || qs->ntrees < 0 || qs->ninner < 0 ||
        (size_t)plen != sizeof(qs_t) + (size_t)qs->ninner * 12 + (((size_t)qs->ninner * 12) % 8 ? 4 : 0) +
                            (size_t)qs->ntrees * 32 * sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "forest_qs: not a packed forest");
        return NULL;
    }
    Py_buffer bx, bn, bro, bde, bv, bo;
    PyObject *res = NULL;
    if (get_buf(oX, &bx, 0, 0, "X") < 0) return NULL;
    Py_ssize_t n = bx.len / (NF * 4);
    if (get_buf(on, &bn, 0, 0, "nodes") < 0) goto q0;
    Py_ssize_t nodes = bn.len / (Py_ssize_t)sizeof(node_t);
    if (get_buf(oro, &bro, 0, 0, "roots") < 0) goto q1;
    Py_ssize_t ntrees = bro.len / 4;
    if (get_buf(ode, &bde, ntrees * 4, 0, "depths") < 0) goto q2;
    if (get_buf(ov, &bv, nodes * 8, 0, "leaf_values") < 0) goto q3;
    if (get_buf(oout, &bo, n * 8, 1, "out") < 0) goto q4;
    {
        const float *X = bx.buf;
        const node_t *nd = bn.buf;
        const int32_t *roots = bro.buf, *depths = bde.buf;
        const double *val = bv.buf;
        double *out = bo.buf;
        if (ntrees != qs->ntrees) {
            PyErr_SetString(PyExc_ValueError, "forest_qs: packed forest and nodes differ");
            goto q5;
        }
        for (int f = 0; f < NF; f++)
            if (qs->fstart[f] < 0 || qs->fstart[f] > qs->fstart[f + 1] || qs->fstart[f + 1] > qs->ninner) {
                PyErr_SetString(PyExc_ValueError, "forest_qs: not a packed forest");
                goto q5;
            }
        const int32_t *tree = QS_TREE(qs);
        for (int32_t j = 0; j < qs->ninner; j++)
            if (tree[j] < 0 || tree[j] >= qs->ntrees) {
                PyErr_SetString(PyExc_ValueError, "forest_qs: not a packed forest");
                goto q5;
            }
        if (check_forest(nd, nodes, roots, depths, ntrees) < 0) goto q5;
        v8u *v = PyMem_Malloc((size_t)(ntrees ? ntrees : 1) * QW * sizeof(v8u) + 64);
        if (!v) {
            PyErr_NoMemory();
            goto q5;
        }
        v8u *va = (v8u *)(((uintptr_t)v + 63) & ~(uintptr_t)63);
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t r0 = 0; r0 < n; r0 += QB) {
            int nb = (int)(n - r0 < QB ? n - r0 : QB);
            qs_block(qs, X + r0 * NF, nb, va, base, out + r0);
        }
        /* rows with a NaN: per node, NaN goes where missing_left says */
        for (Py_ssize_t r = 0; r < n; r++) {
            const float *x = X + r * NF;
            int has_nan = 0;
            for (int f = 0; f < NF; f++) has_nan |= isnan(x[f]);
            if (has_nan) walk_block(x, 1, nd, roots, depths, ntrees, val, base, out + r);
        }
        Py_END_ALLOW_THREADS
        PyMem_Free(v);
        res = Py_None;
        Py_INCREF(res);
    }
q5:
    PyBuffer_Release(&bo);
q4:
    PyBuffer_Release(&bv);
q3:
    PyBuffer_Release(&bde);
q2:
    PyBuffer_Release(&bro);
q1:
    PyBuffer_Release(&bn);
q0:
    PyBuffer_Release(&bx);
    return res;
}

/* ---- features.split_many's fast path ----
 *
 * split_fast(names, rules, nodes, wild, shared) -> (labels, subs, slow)
 * For a name whose last two labels are "label.tld" with tld a public suffix
 * (in rules), "label.tld" not the start of a longer rule (not in nodes), tld
 * no wildcard parent (not in wild), "label.tld" no shared parent and tld not
 * "arpa": the label and the subdomain (what split_many takes from
 * name.rsplit(".", 2)). Every other name is listed in slow (its entries are
 * None) for features.split_label. */
static PyObject *split_fast(PyObject *self, PyObject *args) {
    PyObject *names, *rules, *nodes, *wild, *shared;
    if (!PyArg_ParseTuple(args, "O!OOOO", &PyList_Type, &names, &rules, &nodes, &wild, &shared)) return NULL;
    if (!PyAnySet_Check(rules) || !PyAnySet_Check(nodes) || !PyAnySet_Check(wild) || !PyAnySet_Check(shared)) {
        PyErr_SetString(PyExc_TypeError, "split_fast: the rule tables must be sets");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(names);
    PyObject *labels = PyList_New(n), *subs = PyList_New(n), *slow = PyList_New(0), *empty = NULL;
    PyObject *arpa = PyUnicode_FromString("arpa");
    if (!labels || !subs || !slow || !arpa) goto fail;
    empty = PyUnicode_New(0, 0);
    if (!empty) goto fail;
    for (Py_ssize_t r = 0; r < n; r++) {
        PyObject *nm = PyList_GET_ITEM(names, r);
        if (!PyUnicode_Check(nm)) {
            PyErr_SetString(PyExc_TypeError, "split_fast: names must be str");
            goto fail;
        }
        Py_ssize_t len = PyUnicode_GET_LENGTH(nm);
        Py_ssize_t p1 = len ? PyUnicode_FindChar(nm, '.', 0, len, -1) : -1;
        if (p1 == -2) goto fail;
        int ok = 0;
        PyObject *tld = NULL, *key = NULL, *lab = NULL, *sub = NULL;
        if (p1 >= 0) {
            Py_ssize_t p2 = p1 ? PyUnicode_FindChar(nm, '.', 0, p1, -1) : -1;
            if (p2 == -2) goto fail;
            tld = PyUnicode_Substring(nm, p1 + 1, len);
            key = p2 >= 0 ? PyUnicode_Substring(nm, p2 + 1, len) : (Py_INCREF(nm), nm);
            if (!tld || !key) goto fail_item;
            int c;
            if ((c = PySet_Contains(rules, tld)) < 0) goto fail_item;
            if (c) {
                if ((c = PySet_Contains(nodes, key)) < 0) goto fail_item;
                if (!c) {
                    if ((c = PySet_Contains(wild, tld)) < 0) goto fail_item;
                    if (!c) {
                        if ((c = PySet_Contains(shared, key)) < 0) goto fail_item;
                        if (!c && PyUnicode_Compare(tld, arpa) != 0) ok = 1;
                    }
                }
            }
            if (ok) {
                lab = PyUnicode_Substring(nm, p2 + 1, p1);
                if (p2 >= 0)
                    sub = PyUnicode_Substring(nm, 0, p2);
                else {
                    sub = empty;
                    Py_INCREF(sub);
                }
                if (!lab || !sub) goto fail_item;
            }
        }
        Py_XDECREF(tld);
        Py_XDECREF(key);
        if (!ok) {
            PyObject *i = PyLong_FromSsize_t(r);
            if (!i || PyList_Append(slow, i) < 0) {
                Py_XDECREF(i);
                goto fail;
            }
            Py_DECREF(i);
            Py_INCREF(Py_None);
            Py_INCREF(Py_None);
            lab = sub = Py_None;
        }
        PyList_SET_ITEM(labels, r, lab);
        PyList_SET_ITEM(subs, r, sub);
        continue;
    fail_item:
        Py_XDECREF(tld);
        Py_XDECREF(key);
        Py_XDECREF(lab);
        Py_XDECREF(sub);
        goto fail;
    }
    Py_DECREF(empty);
    Py_DECREF(arpa);
    return Py_BuildValue("(NNN)", labels, subs, slow);
fail:
    /* unset items of a new list are NULL: list_dealloc skips them */
    Py_XDECREF(labels);
    Py_XDECREF(subs);
    Py_XDECREF(slow);
    Py_XDECREF(empty);
    Py_XDECREF(arpa);
    return NULL;
}

/* ---- `detector score`'s JSON lines ----
 *
 * The line detector/commands/score.py writes with orjson for a scored name:
 *   {"domain":N,"dga_score":round(p,4),"dga_alert":p>=thr,"top_features":{F:V,...}}
 * where the top features are np.argsort(-|(X-center)/scale|, kind="stable")[:k]
 * (float32 arithmetic, NaN last) and V is np.round(float64(x), 3). A float
 * prints as Python's repr (orjson prints the same digits): the shortest
 * decimal that reads back, which for d/10^j with few digits is d/10^j itself.
 * Rows this does not cover exactly (a name to escape or not ASCII, a value too
 * large for the short form, a score outside 0..1) get None: the caller formats
 * those with orjson. */

/* "d/10^dec" for an integer d (|d| < 1e15), trimmed as repr trims, into o. */
static int fmt_fixed(char *o, double d, int dec, int neg_zero) {
    char dig[24];
    int n = 0, pos = 0;
    int neg = d < 0 || (d == 0 && neg_zero);
    uint64_t u = (uint64_t)(d < 0 ? -d : d);
    do {
        dig[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (n <= dec) dig[n++] = '0'; /* at least one integer digit */
    if (neg) o[pos++] = '-';
    for (int i = n - 1; i >= dec; i--) o[pos++] = dig[i];
    o[pos++] = '.';
    int lo = 0;
    while (lo < dec - 1 && dig[lo] == '0') lo++; /* trailing zeros, keep one digit */
    if (dec == 0) o[pos++] = '0';
    for (int i = dec - 1; i >= lo; i--) o[pos++] = dig[i];
    return pos;
}

/* Python's round(p, 4) as repr prints it, for 0 <= p <= 1; -1 if unsure. */
static int fmt_score(char *o, double p) {
    if (!(p >= 0.0 && p <= 1.0)) return -1;
    double y = p * 10000.0, fl = floor(y), fr = y - fl, d;
    if (fabs(fr - 0.5) < 1e-6) { /* near a tie: the exact decimal decides */
        char b[32];
        snprintf(b, sizeof b, "%.4f", p);
        d = (double)((b[0] - '0') * 10000 + (b[2] - '0') * 1000 + (b[3] - '0') * 100 + (b[4] - '0') * 10 +
                     (b[5] - '0'));
    } else
        d = fr < 0.5 ? fl : fl + 1;
    return fmt_fixed(o, d, 4, 0);
}

/* numpy's round(x, 3) (rint(x * 1000) / 1000) as repr prints it; -1 if too large. */
static int fmt_round3(char *o, double x) {
    if (!isfinite(x)) return -1;
    double d = rint(x * 1000.0);
    if (!(fabs(d) < 1e15)) return -1;
    double y = d / 1000.0;
    return fmt_fixed(o, d, 3, y == 0 && signbit(y));
}

/* a before b in np.argsort(key, kind="stable"): ascending, NaN last, ties by index */
static inline int key_before(float ka, int a, float kb, int b) {
    int na = isnan(ka), nb = isnan(kb);
    if (na != nb) return nb;
    if (!na && ka != kb) return ka < kb;
    return a < b;
}

/* lines(names, p, X, center, scale, threshold, k, feature_names) -> list of str or None */
static PyObject *lines(PyObject *self, PyObject *args) {
    PyObject *names, *op, *oX, *oc, *os, *fnames;
    double thr;
    int k;
    if (!PyArg_ParseTuple(args, "O!OOOOdiO!", &PyList_Type, &names, &op, &oX, &oc, &os, &thr, &k,
                          &PyTuple_Type, &fnames))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(names);
    if (PyTuple_GET_SIZE(fnames) != NF) {
        PyErr_SetString(PyExc_ValueError, "lines: feature_names must hold NF names");
        return NULL;
    }
    const char *fn[NF];
    Py_ssize_t fl[NF];
    for (int f = 0; f < NF; f++) {
        PyObject *o = PyTuple_GET_ITEM(fnames, f);
        if (!PyUnicode_Check(o) || !PyUnicode_IS_ASCII(o)) {
            PyErr_SetString(PyExc_ValueError, "lines: feature names must be ASCII str");
            return NULL;
        }
        fn[f] = (const char *)PyUnicode_DATA(o);
        fl[f] = PyUnicode_GET_LENGTH(o);
        for (Py_ssize_t i = 0; i < fl[f]; i++)
            if (fn[f][i] < 0x20 || fn[f][i] == '"' || fn[f][i] == '\\') {
                PyErr_SetString(PyExc_ValueError, "lines: feature names must need no escaping");
                return NULL;
            }
    }
    size_t maxfl = 0;
    for (int f = 0; f < NF; f++) maxfl = (size_t)fl[f] > maxfl ? (size_t)fl[f] : maxfl;
    if (k < 0) k = 0;
    if (k > NF) k = NF;
    Py_buffer bp, bx, bc, bs;
    PyObject *res = NULL;
    if (get_buf(op, &bp, n * 8, 0, "p") < 0) return NULL;
    if (get_buf(oX, &bx, n * NF * 4, 0, "X") < 0) goto l1;
    if (get_buf(oc, &bc, NF * 4, 0, "center") < 0) goto l2;
    if (get_buf(os, &bs, NF * 4, 0, "scale") < 0) goto l3;
    res = PyList_New(n);
    if (!res) goto l4;
    {
        const double *p = bp.buf;
        const float *X = bx.buf, *cen = bc.buf, *sca = bs.buf;
        size_t cap = 256;
        char *buf = PyMem_Malloc(cap);
        if (!buf) {
            PyErr_NoMemory();
            Py_CLEAR(res);
            goto l4;
        }
        for (Py_ssize_t r = 0; r < n; r++) {
            PyObject *nm = PyList_GET_ITEM(names, r), *line = Py_None;
            if (!PyUnicode_Check(nm) || !PyUnicode_IS_ASCII(nm)) goto put;
            Py_ssize_t len = PyUnicode_GET_LENGTH(nm);
            const char *s = (const char *)PyUnicode_DATA(nm);
            int plain = 1;
            for (Py_ssize_t i = 0; i < len; i++) {
                char c = s[i];
                plain &= c >= 0x20 && c != '"' && c != '\\';
            }
            if (!plain) goto put;
            size_t need = (size_t)len + 128 + (size_t)k * (maxfl + 40);
            if (need > cap) {
                char *nb = PyMem_Realloc(buf, need);
                if (!nb) {
                    PyMem_Free(buf);
                    PyErr_NoMemory();
                    Py_CLEAR(res);
                    goto l4;
                }
                buf = nb;
                cap = need;
            }
            char *o = buf;
            memcpy(o, "{\"domain\":\"", 11);
            o += 11;
            memcpy(o, s, (size_t)len);
            o += len;
            memcpy(o, "\",\"dga_score\":", 14);
            o += 14;
            int w = fmt_score(o, p[r]);
            if (w < 0) goto put;
            o += w;
            if (p[r] >= thr) {
                memcpy(o, ",\"dga_alert\":true", 17);
                o += 17;
            } else {
                memcpy(o, ",\"dga_alert\":false", 18);
                o += 18;
            }
            memcpy(o, ",\"top_features\":{", 17);
            o += 17;
            if (k) {
                const float *x = X + r * NF;
                float key[NF];
                int order[NF];
                for (int f = 0; f < NF; f++) {
                    float z = (x[f] - cen[f]) / sca[f];
                    key[f] = -fabsf(z);
                    order[f] = f;
                }
                for (int i = 0; i < k; i++) { /* selection, stable */
                    int b = i;
                    for (int j = i + 1; j < NF; j++)
                        if (key_before(key[order[j]], order[j], key[order[b]], order[b])) b = j;
                    int tmp = order[b];
                    for (int j = b; j > i; j--) order[j] = order[j - 1];
                    order[i] = tmp;
                }
                for (int i = 0; i < k; i++) {
                    int f = order[i];
                    if (i) *o++ = ',';
                    *o++ = '"';
                    memcpy(o, fn[f], (size_t)fl[f]);
                    o += fl[f];
                    *o++ = '"';
                    *o++ = ':';
                    w = fmt_round3(o, (double)x[f]);
                    if (w < 0) goto put;
                    o += w;
                }
            }
            *o++ = '}';
            *o++ = '}';
            line = PyUnicode_New(o - buf, 127);
            if (!line) {
                PyMem_Free(buf);
                Py_CLEAR(res);
                goto l4;
            }
            memcpy(PyUnicode_DATA(line), buf, (size_t)(o - buf));
            PyList_SET_ITEM(res, r, line);
            continue;
        put:
            Py_INCREF(Py_None);
            PyList_SET_ITEM(res, r, Py_None);
        }
        PyMem_Free(buf);
    }
l4:
    PyBuffer_Release(&bs);
l3:
    PyBuffer_Release(&bc);
l2:
    PyBuffer_Release(&bx);
l1:
    PyBuffer_Release(&bp);
    return res;
}

static PyMethodDef methods[] = {
    {"features", features, METH_VARARGS, "DGA features of labels into a float32 (n, NF) buffer."},
    {"forest", forest, METH_VARARGS, "Raw scores of a flattened gradient-boosted forest."},
    {"forest_pack", forest_pack, METH_VARARGS, "The flattened forest as leaf bitvectors for forest_qs."},
    {"split_fast", split_fast, METH_VARARGS, "features.split_many's fast path: labels, subs, slow indices."},
    {"lines", lines, METH_VARARGS, "`detector score`'s JSON lines for scored names (None: format in Python)."},
    {"forest_qs", forest_qs, METH_VARARGS, "Raw scores of a flattened forest by leaf bitvectors."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_cdga", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cdga(void) {
    init_tables();
    PyObject *m = PyModule_Create(&mod);
    if (m) PyModule_AddIntConstant(m, "NF", NF);
    return m;
}
