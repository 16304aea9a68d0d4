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
    const unsigned char *seen, *t1, *t2;
} tables_t;

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
                hit[k][i] = t->t1[hk & mask] && t->t2[(hk >> 40) & mask];
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
    double acc = 0.0;
    for (int k = 1; k <= NG_MAX; k++) {
        for (int i = 0; i + k <= L; i++) {
            uint64_t id = 0;
            for (int j = 0; j < k; j++) id = id * NG_BASE + s[i + j];
            uint64_t h = (id + ((uint64_t)k << 40)) * GOLD;
            acc += (double)w[h >> (64 - NG_BITS)];
        }
    }
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
    tables_t t = {bb.buf, tb.buf, sb.buf, have_words ? b1.buf : NULL, have_words ? b2.buf : NULL};
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
        for (Py_ssize_t t = 0; t < ntrees; t++)
            if (roots[t] < 0 || roots[t] >= nodes || depths[t] < 0 || depths[t] > 64) {
                PyErr_SetString(PyExc_ValueError, "forest: root or depth out of range");
                goto x5;
            }
        for (Py_ssize_t i = 0; i < nodes; i++)
            if (nd[i].feat >= NF || nd[i].left < 0 || nd[i].left >= nodes || nd[i].right < 0 ||
                nd[i].right >= nodes) {
                PyErr_SetString(PyExc_ValueError, "forest: bad node");
                goto x5;
            }
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t r0 = 0; r0 < n; r0 += BLOCK) {
            int nb = (int)(n - r0 < BLOCK ? n - r0 : BLOCK);
            const float *xb = X + r0 * NF;
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
            for (int r = 0; r < nb; r++) out[r0 + r] = sum[r];
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

static PyMethodDef methods[] = {
    {"features", features, METH_VARARGS, "DGA features of labels into a float32 (n, NF) buffer."},
    {"forest", forest, METH_VARARGS, "Raw scores of a flattened gradient-boosted forest."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_cdga", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cdga(void) {
    init_tables();
    PyObject *m = PyModule_Create(&mod);
    if (m) PyModule_AddIntConstant(m, "NF", NF);
    return m;
}
