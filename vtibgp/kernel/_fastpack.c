/* The writer's packing loop for the usual route ops, in C: the optional accelerator of
 * vtibgp.kernel.sender (pure Python does the same when this module is not built).
 *
 * pack_run(ops, start, stop, seq_base, del_base, budget, add, replace, delete, fallback,
 *          vias, del4, del6) -> (bytes, end, last)
 *
 * Packs ops[start:stop] into one run of route requests and returns it with the index of the
 * first op not packed and the offset of the run's last request (-1 if none). It packs an op
 * only when it is sure to write exactly what codec.RoutePacker.pack writes for it, by
 * patching a template that RoutePacker made (the sequence number, the prefix length, the
 * address, the metric); it stops at the first op it is not sure of, and the Python path
 * packs that one (and raises its errors):
 *
 *   - ADD / REPLACE: the op's nexthops tuple must be in `vias` (keyed by its id(); the
 *     value is (the tuple itself, [add4, add6]) with None where that template is not made
 *     yet); a REPLACE is the IPv4/IPv6 delete template (sequence del_base + i) followed by
 *     the add template, as in the sender.
 *   - DELETE: del4 / del6; not the fallback route's delete (no nexthops, `fallback` true).
 *   - the prefix: ASCII "address/length", the length in digits without a leading zero and
 *     in range, the address accepted by inet_pton, no IPv6 host bits; the metric and the
 *     sequence numbers fit in 32 bits.
 *
 * It stops too once the run holds `budget` bytes or more (the sender's byte cap).
 *
 * send_order(ops, min_run, nbuckets) -> None | False | (order, reordered ops)
 *
 * vtibgp.kernel.writer._send_order's result, the same algorithm (see there; the order as
 * bytes of native ssize_t, 64-bit on every platform the writer runs on), and the ops in
 * that order; False if an op is not (kind, (prefix: str, ...)): the Python version decides.
 * Template layout (codec._Template): seq at 8, rtm_dst_len at 17, the address at 32, the
 * metric 12 bytes after the address.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

#define SEQ_AT 8
#define PLEN_AT 17
#define ADDR_AT 32
#define METRIC_AFTER_ADDR 12

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buffer;

static int buffer_reserve(Buffer *b, Py_ssize_t more) {
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + more)
        cap *= 2;
    char *grown = PyMem_Realloc(b->data, (size_t)cap);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = grown;
    b->cap = cap;
    return 0;
}

/* The address and length of `prefix`, or 0 if not sure (the Python path decides). */
static int parse_prefix(PyObject *prefix, int *v6, unsigned char addr[16], int *plen) {
    Py_ssize_t n;
    if (!PyUnicode_Check(prefix) || !PyUnicode_IS_ASCII(prefix))
        return 0;
    const char *text = PyUnicode_AsUTF8AndSize(prefix, &n);
    if (text == NULL) {
        PyErr_Clear();
        return 0;
    }
    const char *slash = memchr(text, '/', (size_t)n);
    if (slash == NULL)
        return 0;
    Py_ssize_t alen = slash - text, llen = n - alen - 1;
    if (alen <= 0 || alen > 45 || llen <= 0 || llen > 3)
        return 0;
    const char *digits = slash + 1;
    if (llen > 1 && digits[0] == '0')
        return 0;
    int len = 0;
    for (Py_ssize_t k = 0; k < llen; k++) {
        if (digits[k] < '0' || digits[k] > '9')
            return 0;
        len = len * 10 + (digits[k] - '0');
    }
    char host[46];
    memcpy(host, text, (size_t)alen);
    host[alen] = '\0';
    *v6 = memchr(host, ':', (size_t)alen) != NULL;
    if (len > (*v6 ? 128 : 32))
        return 0;
    if (inet_pton(*v6 ? AF_INET6 : AF_INET, host, addr) != 1)
        return 0;
    if (*v6) {
        for (int bit = len; bit < 128; bit++)
            if (addr[bit >> 3] & (0x80 >> (bit & 7)))
                return 0;
    }
    *plen = len;
    return 1;
}

/* Appends `tmpl` patched with seq, plen, address and metric; 0 if the template is not one. */
static int put(Buffer *b, PyObject *tmpl, uint32_t seq, int plen, const unsigned char *addr,
               int alen, uint32_t metric) {
    if (!PyBytes_CheckExact(tmpl))
        return 0;
    Py_ssize_t size = PyBytes_GET_SIZE(tmpl);
    if (size < ADDR_AT + alen + METRIC_AFTER_ADDR + 4 ||
        PyBytes_AS_STRING(tmpl)[16] != (alen == 16 ? AF_INET6 : AF_INET))
        return 0;  /* rtm_family, at 16, must be the address's */
    if (buffer_reserve(b, size) < 0)
        return -1;
    char *out = b->data + b->len;
    memcpy(out, PyBytes_AS_STRING(tmpl), (size_t)size);
    memcpy(out + SEQ_AT, &seq, 4);
    out[PLEN_AT] = (char)plen;
    memcpy(out + ADDR_AT, addr, (size_t)alen);
    memcpy(out + ADDR_AT + alen + METRIC_AFTER_ADDR, &metric, 4);
    b->len += size;
    return 1;
}

/* The add template for a route through `nexthops` (slot 0 IPv4, 1 IPv6). */
static PyObject *via_template(PyObject *vias, PyObject *nexthops, int slot) {
    PyObject *key = PyLong_FromVoidPtr(nexthops);
    if (key == NULL)
        return NULL;
    PyObject *hit = PyDict_GetItemWithError(vias, key);
    Py_DECREF(key);
    if (hit == NULL)
        return NULL;
    if (!PyTuple_CheckExact(hit) || PyTuple_GET_SIZE(hit) != 2 ||
        PyTuple_GET_ITEM(hit, 0) != nexthops)
        return NULL;
    PyObject *slots = PyTuple_GET_ITEM(hit, 1);
    if (!PyList_CheckExact(slots) || PyList_GET_SIZE(slots) != 2)
        return NULL;
    PyObject *tmpl = PyList_GET_ITEM(slots, slot);
    return tmpl == Py_None ? NULL : tmpl;
}

static PyObject *pack_run(PyObject *self, PyObject *args) {
    PyObject *ops, *add, *replace, *delete, *vias, *del4, *del6;
    Py_ssize_t start, stop, budget;
    unsigned long long seq_base, del_base;
    int fallback;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!nnKKnOOOpO!SS:pack_run", &PyList_Type, &ops, &start, &stop,
                          &seq_base, &del_base, &budget, &add, &replace, &delete, &fallback,
                          &PyDict_Type, &vias, &del4, &del6))
        return NULL;
    if (stop > PyList_GET_SIZE(ops))
        stop = PyList_GET_SIZE(ops);
    Buffer b = {NULL, 0, 0};
    Py_ssize_t last_at = -1;
    Py_ssize_t i = start < 0 ? 0 : start;
    for (; i < stop && b.len < budget; i++) {
        PyObject *op = PyList_GET_ITEM(ops, i);
        if (!PyTuple_Check(op) || PyTuple_GET_SIZE(op) != 2)
            break;
        PyObject *kind = PyTuple_GET_ITEM(op, 0), *route = PyTuple_GET_ITEM(op, 1);
        if (!PyTuple_Check(route) || PyTuple_GET_SIZE(route) != 3)
            break;
        PyObject *prefix = PyTuple_GET_ITEM(route, 0), *metric_obj = PyTuple_GET_ITEM(route, 1);
        PyObject *nexthops = PyTuple_GET_ITEM(route, 2);
        if (!PyTuple_Check(nexthops) || !PyLong_Check(metric_obj))
            break;
        int overflow = 0;
        long long metric = PyLong_AsLongLongAndOverflow(metric_obj, &overflow);
        if (overflow || metric < 0 || metric > 0xFFFFFFFFLL) {
            PyErr_Clear();
            break;
        }
        unsigned long long seq = seq_base + (unsigned long long)i;
        unsigned long long dseq = del_base + (unsigned long long)i;
        if (seq > 0xFFFFFFFFULL || dseq > 0xFFFFFFFFULL)
            break;
        int v6, plen;
        unsigned char addr[16];
        if (!parse_prefix(prefix, &v6, addr, &plen))
            break;
        int alen = v6 ? 16 : 4;
        int done;
        if (kind == delete) {
            if (fallback && PyTuple_GET_SIZE(nexthops) == 0)
                break;
            Py_ssize_t at = b.len;
            done = put(&b, v6 ? del6 : del4, (uint32_t)seq, plen, addr, alen, (uint32_t)metric);
            if (done == 1)
                last_at = at;
        } else if ((kind == add || kind == replace) && PyTuple_GET_SIZE(nexthops) > 0) {
            PyObject *tmpl = via_template(vias, nexthops, v6);
            if (tmpl == NULL) {
                if (PyErr_Occurred())
                    goto error;
                break;
            }
            Py_ssize_t mark = b.len;
            done = 1;
            if (kind == replace)
                done = put(&b, v6 ? del6 : del4, (uint32_t)dseq, plen, addr, alen,
                           (uint32_t)metric);
            Py_ssize_t at = b.len;
            if (done == 1)
                done = put(&b, tmpl, (uint32_t)seq, plen, addr, alen, (uint32_t)metric);
            if (done == 1)
                last_at = at;
            if (done == 0)
                b.len = mark;  /* the delete of a REPLACE whose add cannot be packed here */
        } else {
            break;
        }
        if (done < 0)
            goto error;
        if (done == 0)
            break;
    }
    PyObject *data = PyBytes_FromStringAndSize(b.data ? b.data : "", b.len);
    PyMem_Free(b.data);
    if (data == NULL)
        return NULL;
    PyObject *out = Py_BuildValue("(Nnn)", data, i, last_at);
    return out;
error:
    PyMem_Free(b.data);
    return NULL;
}

/* The prefix of op `op` (borrowed), or NULL if the op is not (kind, (prefix: str, ...)). */
static PyObject *op_prefix(PyObject *op) {
    if (!PyTuple_Check(op) || PyTuple_GET_SIZE(op) != 2)
        return NULL;
    PyObject *route = PyTuple_GET_ITEM(op, 1);
    if (!PyTuple_Check(route) || PyTuple_GET_SIZE(route) < 1)
        return NULL;
    PyObject *prefix = PyTuple_GET_ITEM(route, 0);
    return PyUnicode_Check(prefix) ? prefix : NULL;
}

/* writer._send_order's algorithm, for its hot case: see there. */
_Static_assert(sizeof(Py_ssize_t) == 8, "the order is read as 64-bit integers (\"q\")");

static PyObject *send_order(PyObject *self, PyObject *args) {
    PyObject *ops;
    Py_ssize_t min_run, nbuckets;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!nn:send_order", &PyList_Type, &ops, &min_run, &nbuckets))
        return NULL;
    if (nbuckets < 1) {
        PyErr_SetString(PyExc_ValueError, "nbuckets must be at least 1");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(ops);
    for (Py_ssize_t k = 0; k < n; k++)
        if (op_prefix(PyList_GET_ITEM(ops, k)) == NULL)
            Py_RETURN_FALSE;  /* not the usual ops: the Python version decides */
    Py_ssize_t *order = NULL, *bucket_of = NULL, *fill = NULL;
    int spread = 0;
    order = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n ? n : 1));
    bucket_of = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n ? n : 1));
    fill = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(nbuckets + 1));
    if (order == NULL || bucket_of == NULL || fill == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    for (Py_ssize_t k = 0; k < n; k++)
        order[k] = k;
    Py_ssize_t i = 0;
    while (i < n) {
        PyObject *kind = PyTuple_GET_ITEM(PyList_GET_ITEM(ops, i), 0);
        Py_ssize_t j = i + 1;
        while (j < n && PyTuple_GET_ITEM(PyList_GET_ITEM(ops, j), 0) == kind)
            j++;
        if (j - i >= min_run) {
            spread = 1;
            /* bucket nbuckets holds the IPv6 ops, after every IPv4 bucket */
            for (Py_ssize_t b = 0; b <= nbuckets; b++)
                fill[b] = 0;
            for (Py_ssize_t k = i; k < j; k++) {
                PyObject *prefix = op_prefix(PyList_GET_ITEM(ops, k));
                Py_ssize_t b;
                if (PyUnicode_FindChar(prefix, ':', 0, PyUnicode_GET_LENGTH(prefix), 1) >= 0) {
                    b = nbuckets;
                } else {
                    Py_hash_t h = PyObject_Hash(prefix);
                    if (h == -1)
                        goto error;
                    b = (Py_ssize_t)(h % nbuckets);
                    if (b < 0)
                        b += nbuckets;  /* Python's modulo */
                }
                bucket_of[k] = b;
                fill[b]++;
            }
            Py_ssize_t at = i;
            for (Py_ssize_t b = 0; b <= nbuckets; b++) {  /* counts -> first positions */
                Py_ssize_t c = fill[b];
                fill[b] = at;
                at += c;
            }
            for (Py_ssize_t k = i; k < j; k++)
                order[fill[bucket_of[k]]++] = k;
        }
        i = j;
    }
    PyObject *out = NULL;
    if (!spread) {
        out = Py_None;
        Py_INCREF(out);
    } else {
        /* the order as machine integers (the caller reads it through memoryview.cast("q")
         * only when an op failed): no int object per op */
        PyObject *idx = PyBytes_FromStringAndSize((const char *)order,
                                                  (Py_ssize_t)sizeof(Py_ssize_t) * n);
        PyObject *work = PyList_New(n);
        if (idx == NULL || work == NULL) {
            Py_XDECREF(idx);
            Py_XDECREF(work);
            goto error;
        }
        for (Py_ssize_t k = 0; k < n; k++) {
            PyObject *op = PyList_GET_ITEM(ops, order[k]);
            Py_INCREF(op);
            PyList_SET_ITEM(work, k, op);
        }
        out = Py_BuildValue("(NN)", idx, work);
    }
    PyMem_Free(order);
    PyMem_Free(bucket_of);
    PyMem_Free(fill);
    return out;
error:
    PyMem_Free(order);
    PyMem_Free(bucket_of);
    PyMem_Free(fill);
    return NULL;
}

static PyMethodDef methods[] = {
    {"send_order", send_order, METH_VARARGS,
     "send_order(ops, min_run, nbuckets) -> None | False | (order as ssize_t bytes, reordered "
     "ops): "
     "vtibgp.kernel.writer._send_order's result (False: not the usual ops, ask it)."},
    {"pack_run", pack_run, METH_VARARGS,
     "pack_run(ops, start, stop, seq_base, del_base, budget, add, replace, delete, fallback, "
     "vias, del4, del6) -> (bytes, end, last): the usual route ops packed (see the module's "
     "source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpack",
    "The writer's packing loop for the usual route ops, in C (optional; see "
    "vtibgp.kernel.sender).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpack(void) { return PyModule_Create(&module); }
