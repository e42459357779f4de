# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled core of the BytePiece tokenizer (kexue.fm/archives/9752, 9768, 9811).

Three hot paths, each mirrored line by line by :mod:`kexue.tokenizers.reference`:

* :class:`DoubleArray` -- a double-array trie over *reversed* byte strings. Walking it backwards from
  an end position ``e`` (``x[e-1]``, ``x[e-2]``, ...) yields every vocabulary piece ending at ``e``,
  shortest first, with O(1) work per byte.
* :class:`UnigramCore` -- Unigram Viterbi decoding (``score[e] = max_s score[s] + l(x[s:e])``; on ties
  the longest piece wins, as in BytePiece) and the exact ("perfect") sampler of post 9811
  (``Z[e] = logsumexp_s Z[s] + alpha*l(x[s:e])`` and ``P(back[e] = s) = exp(Z[s] + alpha*l - Z[e])`` drawn in
  the same forward pass, so a segmentation has probability ``exp(alpha*S(seg) - Z[n])``). Both release the
  GIL.
* :class:`NgramTable` / :class:`BNLMCore` -- n-gram counting with packed ``uint64`` keys in an
  open-addressing hash map, and the byte n-gram language-model segmentation (Viterbi over
  ``(position, state)``) used to train the vocabulary.

Randomness comes from xoshiro256** seeded by splitmix64 from ``(seed, stream)``; uniforms are
``(next >> 11) * 2**-53``.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from libc.math cimport INFINITY, exp, log
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memset

# ---------------------------------------------------------------------------------------------
# random numbers: splitmix64 seeding + xoshiro256**
# ---------------------------------------------------------------------------------------------

cdef struct Rng:
    uint64_t s0
    uint64_t s1
    uint64_t s2
    uint64_t s3


cdef inline uint64_t _splitmix_next(uint64_t* x) noexcept nogil:
    x[0] += <uint64_t>0x9E3779B97F4A7C15ULL
    cdef uint64_t z = x[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline void _rng_seed(Rng* r, uint64_t seed, uint64_t stream) noexcept nogil:
    cdef uint64_t x = stream
    cdef uint64_t mixed = _splitmix_next(&x)
    x = seed ^ mixed
    r.s0 = _splitmix_next(&x)
    r.s1 = _splitmix_next(&x)
    r.s2 = _splitmix_next(&x)
    r.s3 = _splitmix_next(&x)


cdef inline uint64_t _rotl(uint64_t v, int k) noexcept nogil:
    return (v << k) | (v >> (64 - k))


cdef inline double _rng_uniform(Rng* r) noexcept nogil:
    cdef uint64_t result = _rotl(r.s1 * 5, 7) * 9
    cdef uint64_t t = r.s1 << 17
    r.s2 ^= r.s0
    r.s3 ^= r.s1
    r.s1 ^= r.s2
    r.s0 ^= r.s3
    r.s2 ^= t
    r.s3 = _rotl(r.s3, 45)
    return <double>(result >> 11) * (1.0 / 9007199254740992.0)


def uniforms(uint64_t seed, uint64_t stream, Py_ssize_t n):
    """The first ``n`` uniforms of the stream ``(seed, stream)`` (for tests)."""
    cdef Rng r
    _rng_seed(&r, seed, stream)
    return [_rng_uniform(&r) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# double-array trie
# ---------------------------------------------------------------------------------------------

cdef class DoubleArray:
    """Double-array trie: child of ``node`` by byte ``c`` is ``t = base[node] + c`` if ``check[t] == node``.

    Built from byte strings that are sorted and unique; ``value[node]`` is the index of the string ending
    at ``node`` (or -1).
    """

    cdef int32_t* base
    cdef int32_t* check
    cdef int32_t* value
    cdef int64_t* nextfree
    cdef int64_t cap
    cdef public int64_t num_nodes
    cdef public int64_t max_depth

    def __cinit__(self):
        self.base = NULL
        self.check = NULL
        self.value = NULL
        self.nextfree = NULL
        self.cap = 0
        self.num_nodes = 0
        self.max_depth = 0

    def __dealloc__(self):
        free(self.base)
        free(self.check)
        free(self.value)
        free(self.nextfree)

    cdef int _grow(self, int64_t need) except -1:
        cdef int64_t new_cap, i
        if need <= self.cap:
            return 0
        new_cap = self.cap if self.cap > 0 else 1024
        while new_cap < need:
            new_cap *= 2
        if new_cap > 2147483000:
            raise MemoryError("double-array trie would exceed 2**31 slots")
        self.base = <int32_t*>_xrealloc(self.base, new_cap * sizeof(int32_t))
        self.check = <int32_t*>_xrealloc(self.check, new_cap * sizeof(int32_t))
        self.value = <int32_t*>_xrealloc(self.value, new_cap * sizeof(int32_t))
        self.nextfree = <int64_t*>_xrealloc(self.nextfree, (new_cap + 1) * sizeof(int64_t))
        for i in range(self.cap, new_cap):
            self.base[i] = 0
            self.check[i] = -1
            self.value[i] = -1
            self.nextfree[i] = i
        self.nextfree[new_cap] = new_cap
        self.cap = new_cap
        return 0

    cdef inline int64_t _find(self, int64_t i) noexcept:
        # smallest free slot >= i (union-find with path halving); slots beyond cap count as free
        while i < self.cap and self.nextfree[i] != i:
            self.nextfree[i] = self.nextfree[self.nextfree[i]]
            i = self.nextfree[i]
        return i

    cdef int _use(self, int64_t slot, int32_t parent) except -1:
        self._grow(slot + 257)
        self.check[slot] = parent
        self.nextfree[slot] = slot + 1
        if slot + 1 > self.num_nodes:
            self.num_nodes = slot + 1
        return 0

    cdef int64_t _find_base(self, const uint8_t* labels, int k) except -1:
        cdef int64_t p = self._find(<int64_t>labels[0] + 1)
        cdef int64_t b, slot
        cdef int t
        cdef bint ok
        while True:
            b = p - labels[0]
            self._grow(b + 257)
            ok = True
            for t in range(1, k):
                slot = b + labels[t]
                if self.nextfree[slot] != slot:
                    ok = False
                    break
            if ok:
                return b
            p = self._find(p + 1)

    def build(self, const uint8_t[::1] buf, const int64_t[::1] offsets, const int32_t[::1] values):
        """Insert ``buf[offsets[i]:offsets[i+1]]`` with value ``values[i]``; strings sorted and unique."""
        cdef int64_t n = offsets.shape[0] - 1
        cdef int64_t i, lo, hi, depth, sp, cap_stack, ln
        cdef int32_t node
        cdef int k, t
        cdef uint8_t c
        cdef uint8_t labels[256]
        cdef int64_t starts[257]
        cdef int64_t* stack
        cdef int64_t b
        if n < 0 or values.shape[0] != n:
            raise ValueError("offsets must have len(values) + 1 entries")
        for i in range(n):
            if offsets[i + 1] < offsets[i] or offsets[i + 1] > buf.shape[0]:
                raise ValueError("offsets must be non-decreasing and within the buffer")
            if offsets[i + 1] - offsets[i] > self.max_depth:
                self.max_depth = offsets[i + 1] - offsets[i]
        self._grow(1024)
        self._use(0, -1)
        cap_stack = 1024
        stack = <int64_t*>malloc(cap_stack * 4 * sizeof(int64_t))
        if stack == NULL:
            raise MemoryError()
        try:
            sp = 0
            stack[0] = 0
            stack[1] = n
            stack[2] = 0
            stack[3] = 0
            sp = 1
            while sp > 0:
                sp -= 1
                lo = stack[4 * sp]
                hi = stack[4 * sp + 1]
                depth = stack[4 * sp + 2]
                node = <int32_t>stack[4 * sp + 3]
                if lo < hi and offsets[lo + 1] - offsets[lo] == depth:
                    self.value[node] = values[lo]
                    lo += 1
                    if lo < hi and offsets[lo + 1] - offsets[lo] == depth:
                        raise ValueError("strings must be unique and sorted")
                if lo >= hi:
                    continue
                k = 0
                i = lo
                while i < hi:
                    c = buf[offsets[i] + depth]
                    if k > 0 and c <= labels[k - 1]:
                        raise ValueError("strings must be sorted")
                    labels[k] = c
                    starts[k] = i
                    k += 1
                    while i < hi:
                        ln = offsets[i + 1] - offsets[i]
                        if ln <= depth:
                            raise ValueError("strings must be sorted")
                        if buf[offsets[i] + depth] != c:
                            break
                        i += 1
                starts[k] = hi
                b = self._find_base(labels, k)
                self.base[node] = <int32_t>b
                for t in range(k):
                    self._use(b + labels[t], node)
                if sp + k >= cap_stack:
                    while sp + k >= cap_stack:
                        cap_stack *= 2
                    stack = <int64_t*>_xrealloc(stack, cap_stack * 4 * sizeof(int64_t))
                for t in range(k - 1, -1, -1):
                    stack[4 * sp] = starts[t]
                    stack[4 * sp + 1] = starts[t + 1]
                    stack[4 * sp + 2] = depth + 1
                    stack[4 * sp + 3] = b + labels[t]
                    sp += 1
        finally:
            free(stack)
        free(self.nextfree)
        self.nextfree = NULL
        return self

    def lookup(self, bytes key):
        """Value stored for ``key`` (walked in the given byte order), or -1."""
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(key)
        cdef Py_ssize_t i, n = PyBytes_GET_SIZE(key)
        cdef int32_t node = 0, t
        for i in range(n):
            t = self.base[node] + p[i]
            if self.check[t] != node:
                return -1
            node = t
        return self.value[node]


cdef void* _xrealloc(void* p, size_t size) except NULL:
    cdef void* q = realloc(p, size)
    if q == NULL:
        raise MemoryError()
    return q


cdef DoubleArray _reversed_trie(list keys):
    """Trie over the reversed ``keys`` (value = index in ``keys``)."""
    import array

    cdef DoubleArray trie = DoubleArray()
    rev = sorted([(k[::-1], i) for i, k in enumerate(keys)])
    buf = b"".join([r[0] for r in rev])
    offsets = array.array("q", [0])
    pos = 0
    for r in rev:
        pos += len(r[0])
        offsets.append(pos)
    trie.build(buf, offsets, array.array("i", [r[1] for r in rev]))
    return trie


# ---------------------------------------------------------------------------------------------
# Unigram decoding and sampling
# ---------------------------------------------------------------------------------------------

cdef struct Lattice:
    const int32_t* base
    const int32_t* check
    const int32_t* value
    const double* logp


cdef int64_t _lattice(const Lattice* m, const uint8_t* x, int64_t n, bint sample, double alpha, Rng* rng,
                      double* score, int64_t* back, int32_t* piece, int32_t* out, double* cc, int64_t* cp,
                      int32_t* cv) noexcept nogil:
    """Decode (or sample) one chunk ``x[0:n]``; write piece indices to ``out``; return their number.

    Sampling draws ``back[e] = s`` with probability ``exp(Z[s] + alpha*l - Z[e])`` -- the law of the weighted
    reservoir of post 9811 -- by one inverse-CDF draw over the candidates of ``e`` (one uniform and one log
    per position instead of one uniform, one logaddexp and one exp per edge).
    """
    cdef int64_t e, p, cnt, i, k, j
    cdef int32_t node, t, v, tmp
    cdef double best, c, cmax, w, u, acc
    cdef int64_t bs
    cdef int32_t bp
    score[0] = 0.0
    for e in range(1, n + 1):
        node = 0
        p = e - 1
        best = -INFINITY
        cmax = -INFINITY
        bs = -1
        bp = -1
        k = 0
        while p >= 0:
            t = m.base[node] + x[p]
            if m.check[t] != node:
                break
            node = t
            v = m.value[node]
            if v >= 0:
                if not sample:
                    c = score[p] + m.logp[v]
                    if c >= best:  # shortest first: ">=" lets the longest of equal scores win
                        best = c
                        bs = p
                        bp = v
                else:
                    c = score[p] + alpha * m.logp[v]
                    cc[k] = c
                    cp[k] = p
                    cv[k] = v
                    k += 1
                    if c > cmax:
                        cmax = c
            p -= 1
        if sample:
            if k == 1:
                best = cc[0]
                j = 0
            else:
                w = 0.0
                for j in range(k):
                    cc[j] = exp(cc[j] - cmax)
                    w += cc[j]
                best = cmax + log(w)
                u = _rng_uniform(rng) * w
                j = 0
                acc = cc[0]
                while acc <= u and j < k - 1:
                    j += 1
                    acc += cc[j]
                while cc[j] == 0.0 and j > 0:
                    j -= 1
            bs = cp[j]
            bp = cv[j]
        score[e] = best
        back[e] = bs
        piece[e] = bp
    cnt = 0
    e = n
    while e > 0:
        out[cnt] = piece[e]
        cnt += 1
        e = back[e]
    for i in range(cnt // 2):
        tmp = out[i]
        out[i] = out[cnt - 1 - i]
        out[cnt - 1 - i] = tmp
    return cnt


cdef struct _Buffers:
    double* score
    int64_t* back
    int32_t* piece
    double* cc
    int64_t* cp
    int32_t* cv


cdef int64_t _encode(const Lattice* m, const uint8_t* x, int64_t n, bint chunked, bint sample, double alpha,
                     Rng* rng, _Buffers* w, int32_t* out) noexcept nogil:
    """Split ``x`` into chunks (a run of non-newline bytes plus its newlines) and decode each."""
    cdef int64_t a = 0, b, nout = 0
    while a < n:
        b = a
        if chunked:
            while b < n and x[b] != 10:
                b += 1
            while b < n and x[b] == 10:
                b += 1
        else:
            b = n
        nout += _lattice(m, x + a, b - a, sample, alpha, rng, w.score, w.back, w.piece, out + nout, w.cc, w.cp,
                         w.cv)
        a = b
    return nout


cdef class _Work:
    """Scratch buffers for texts of up to ``cap`` bytes and pieces of up to ``depth`` bytes."""

    cdef _Buffers b
    cdef int32_t* out
    cdef int64_t cap
    cdef int64_t depth

    def __cinit__(self):
        memset(&self.b, 0, sizeof(_Buffers))
        self.out = NULL
        self.cap = -1
        self.depth = -1

    def __dealloc__(self):
        free(self.b.score)
        free(self.b.back)
        free(self.b.piece)
        free(self.b.cc)
        free(self.b.cp)
        free(self.b.cv)
        free(self.out)

    cdef int reserve(self, int64_t n, int64_t depth) except -1:
        if n > self.cap:
            self.b.score = <double*>_xrealloc(self.b.score, (n + 1) * sizeof(double))
            self.b.back = <int64_t*>_xrealloc(self.b.back, (n + 1) * sizeof(int64_t))
            self.b.piece = <int32_t*>_xrealloc(self.b.piece, (n + 1) * sizeof(int32_t))
            self.out = <int32_t*>_xrealloc(self.out, (n + 1) * sizeof(int32_t))
            self.cap = n
        if depth > self.depth:
            self.b.cc = <double*>_xrealloc(self.b.cc, (depth + 1) * sizeof(double))
            self.b.cp = <int64_t*>_xrealloc(self.b.cp, (depth + 1) * sizeof(int64_t))
            self.b.cv = <int32_t*>_xrealloc(self.b.cv, (depth + 1) * sizeof(int32_t))
            self.depth = depth
        return 0


cdef list _int_list(const int32_t* a, int64_t n, int32_t offset, int32_t bos, int32_t eos):
    cdef int64_t extra = (1 if bos >= 0 else 0) + (1 if eos >= 0 else 0)
    cdef list out = PyList_New(n + extra)
    cdef int64_t i, j = 0
    cdef object o
    if bos >= 0:
        o = bos
        Py_INCREF(o)
        PyList_SET_ITEM(out, j, o)
        j += 1
    for i in range(n):
        o = a[i] + offset
        Py_INCREF(o)
        PyList_SET_ITEM(out, j, o)
        j += 1
    if eos >= 0:
        o = eos
        Py_INCREF(o)
        PyList_SET_ITEM(out, j, o)
    return out


cdef class UnigramCore:
    """Unigram lattice over a fixed vocabulary: ``pieces[i]`` has log-probability ``logp[i]``."""

    cdef DoubleArray trie
    cdef double* logp
    cdef Lattice lat
    cdef public int64_t num_pieces
    cdef list pieces

    def __cinit__(self):
        self.logp = NULL

    def __init__(self, list pieces, const double[::1] logp):
        cdef Py_ssize_t i, n = len(pieces)
        if logp.shape[0] != n:
            raise ValueError(f"logp has {logp.shape[0]} entries but there are {n} pieces")
        for i in range(n):
            if not isinstance(pieces[i], bytes) or len(<bytes>pieces[i]) == 0:
                raise TypeError("pieces must be non-empty bytes")
        self.pieces = list(pieces)
        self.num_pieces = n
        self.trie = _reversed_trie(self.pieces)
        self.logp = <double*>malloc((n + 1) * sizeof(double))
        if self.logp == NULL:
            raise MemoryError()
        for i in range(n):
            self.logp[i] = logp[i]
        for i in range(256):
            if self.trie.lookup(bytes([i])) < 0:
                raise ValueError(f"the vocabulary must contain every single byte; {bytes([i])!r} is missing")
        self.lat.base = self.trie.base
        self.lat.check = self.trie.check
        self.lat.value = self.trie.value
        self.lat.logp = self.logp

    def __dealloc__(self):
        free(self.logp)

    @property
    def max_piece_length(self):
        return self.trie.max_depth

    def encode(self, bytes data, bint chunked=True, bint sample=False, double alpha=0.0,
               uint64_t seed=0, uint64_t stream=0, int32_t offset=0, int32_t bos=-1, int32_t eos=-1):
        """Piece indices (plus ``offset``) of ``data``; optional ``bos``/``eos`` ids (-1: none)."""
        cdef const uint8_t* x = <const uint8_t*>PyBytes_AS_STRING(data)
        cdef int64_t n = PyBytes_GET_SIZE(data), cnt
        cdef _Work w = _Work()
        cdef Rng rng
        w.reserve(n, self.trie.max_depth)
        _rng_seed(&rng, seed, stream)
        with nogil:
            cnt = _encode(&self.lat, x, n, chunked, sample, alpha, &rng, &w.b, w.out)
        return _int_list(w.out, cnt, offset, bos, eos)

    def tokenize(self, bytes data, bint chunked=True, bint sample=False, double alpha=0.0,
                 uint64_t seed=0, uint64_t stream=0):
        """The pieces of ``data`` as ``bytes`` slices."""
        cdef const uint8_t* x = <const uint8_t*>PyBytes_AS_STRING(data)
        cdef int64_t n = PyBytes_GET_SIZE(data), cnt, i, pos = 0, ln
        cdef _Work w = _Work()
        cdef Rng rng
        w.reserve(n, self.trie.max_depth)
        _rng_seed(&rng, seed, stream)
        with nogil:
            cnt = _encode(&self.lat, x, n, chunked, sample, alpha, &rng, &w.b, w.out)
        out = PyList_New(cnt)
        for i in range(cnt):
            ln = len(<bytes>self.pieces[w.out[i]])
            o = PyBytes_FromStringAndSize(<const char*>x + pos, ln)
            Py_INCREF(o)
            PyList_SET_ITEM(out, i, o)
            pos += ln
        return out

    def encode_many(self, list datas, bint chunked=True, bint sample=False, double alpha=0.0,
                    uint64_t seed=0, uint64_t first_stream=0, int32_t offset=0, int32_t bos=-1,
                    int32_t eos=-1):
        """Encode a list of ``bytes``; item ``i`` uses random stream ``first_stream + i``.

        The whole batch runs without the GIL, so several threads can share one core object.
        """
        cdef Py_ssize_t m = len(datas), i
        cdef int64_t total = 0, maxn = 0, n, pos = 0
        cdef const uint8_t** ptrs = NULL
        cdef int64_t* lens = NULL
        cdef int64_t* counts = NULL
        cdef int32_t* outs = NULL
        cdef _Work w = _Work()
        cdef Rng rng
        for i in range(m):
            if not isinstance(datas[i], bytes):
                raise TypeError(f"item {i} must be bytes, got {type(datas[i]).__name__}")
            n = PyBytes_GET_SIZE(datas[i])
            total += n
            if n > maxn:
                maxn = n
        ptrs = <const uint8_t**>malloc((m + 1) * sizeof(uint8_t*))
        lens = <int64_t*>malloc((m + 1) * sizeof(int64_t))
        counts = <int64_t*>malloc((m + 1) * sizeof(int64_t))
        outs = <int32_t*>malloc((total + 1) * sizeof(int32_t))
        try:
            if ptrs == NULL or lens == NULL or counts == NULL or outs == NULL:
                raise MemoryError()
            for i in range(m):
                ptrs[i] = <const uint8_t*>PyBytes_AS_STRING(datas[i])
                lens[i] = PyBytes_GET_SIZE(datas[i])
            w.reserve(maxn, self.trie.max_depth)
            with nogil:
                for i in range(m):
                    _rng_seed(&rng, seed, first_stream + <uint64_t>i)
                    counts[i] = _encode(&self.lat, ptrs[i], lens[i], chunked, sample, alpha, &rng, &w.b,
                                        outs + pos)
                    pos += counts[i]
            result = PyList_New(m)
            pos = 0
            for i in range(m):
                o = _int_list(outs + pos, counts[i], offset, bos, eos)
                Py_INCREF(o)
                PyList_SET_ITEM(result, i, o)
                pos += counts[i]
            return result
        finally:
            free(ptrs)
            free(lens)
            free(counts)
            free(outs)

    def split_counts(self, list keys, const int64_t[::1] weights, int64_t[::1] out):
        """Segment each ``keys[i]`` (no chunking) and add ``weights[i]`` to ``out`` for every piece used."""
        cdef Py_ssize_t m = len(keys), i
        cdef int64_t maxn = 0, n, cnt, j
        cdef const uint8_t** ptrs = NULL
        cdef int64_t* lens = NULL
        cdef _Work w = _Work()
        cdef Rng rng
        if weights.shape[0] != m:
            raise ValueError(f"weights has {weights.shape[0]} entries but there are {m} keys")
        if out.shape[0] != self.num_pieces:
            raise ValueError(f"out must have {self.num_pieces} entries, got {out.shape[0]}")
        for i in range(m):
            if not isinstance(keys[i], bytes):
                raise TypeError(f"key {i} must be bytes, got {type(keys[i]).__name__}")
            n = PyBytes_GET_SIZE(keys[i])
            if n > maxn:
                maxn = n
        ptrs = <const uint8_t**>malloc((m + 1) * sizeof(uint8_t*))
        lens = <int64_t*>malloc((m + 1) * sizeof(int64_t))
        try:
            if ptrs == NULL or lens == NULL:
                raise MemoryError()
            for i in range(m):
                ptrs[i] = <const uint8_t*>PyBytes_AS_STRING(keys[i])
                lens[i] = PyBytes_GET_SIZE(keys[i])
            w.reserve(maxn, self.trie.max_depth)
            _rng_seed(&rng, 0, 0)
            with nogil:
                for i in range(m):
                    cnt = _encode(&self.lat, ptrs[i], lens[i], False, False, 0.0, &rng, &w.b, w.out)
                    for j in range(cnt):
                        out[w.out[j]] += weights[i]
        finally:
            free(ptrs)
            free(lens)

    def log_partition(self, bytes data, double alpha):
        """``log Z_alpha(data)`` of the unchunked lattice (sum over all segmentations of exp(alpha*S))."""
        cdef const uint8_t* x = <const uint8_t*>PyBytes_AS_STRING(data)
        cdef int64_t n = PyBytes_GET_SIZE(data)
        cdef _Work w = _Work()
        cdef Rng rng
        w.reserve(n, self.trie.max_depth)
        _rng_seed(&rng, 0, 0)
        _encode(&self.lat, x, n, False, True, alpha, &rng, &w.b, w.out)
        return w.b.score[n] if n > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# n-gram counting (pass 1 of training)
# ---------------------------------------------------------------------------------------------

cdef uint64_t _EMPTY = 0xFFFFFFFFFFFFFFFFULL


cdef inline uint64_t _mix(uint64_t key) noexcept nogil:
    cdef uint64_t z = key ^ (key >> 29)
    z *= <uint64_t>0xBF58476D1CE4E5B9ULL
    return z ^ (z >> 32)


cdef class NgramTable:
    """Counts of the byte *windows* ``x[i:i+order]`` (clipped at the chunk end) at every position ``i``.

    Keys are packed n-grams: ``key(g) = sum_k g[k] << (56 - 8 k) | len(g)`` (bytes big-endian in the high
    56 bits, the length in the low byte), so ``order <= 7``. The count of any n-gram ``g`` with
    ``|g| <= order`` is the total count of the windows that start with ``g`` (:func:`expand_windows`):
    one hash-table update per byte instead of ``order + 1``.
    """

    cdef uint64_t* keys
    cdef int64_t* counts
    cdef int64_t cap
    cdef int64_t size

    def __cinit__(self, int64_t capacity=1 << 16):
        cdef int64_t cap = 1024
        self.keys = NULL
        self.counts = NULL
        while cap < 2 * capacity:
            cap *= 2
        self._alloc(cap)

    def __dealloc__(self):
        free(self.keys)
        free(self.counts)

    cdef int _alloc(self, int64_t cap) except -1:
        cdef int64_t i
        self.keys = <uint64_t*>malloc(cap * sizeof(uint64_t))
        self.counts = <int64_t*>malloc(cap * sizeof(int64_t))
        if self.keys == NULL or self.counts == NULL:
            free(self.keys)
            free(self.counts)
            self.keys = NULL
            self.counts = NULL
            raise MemoryError("n-gram table")
        for i in range(cap):
            self.keys[i] = _EMPTY
            self.counts[i] = 0
        self.cap = cap
        self.size = 0
        return 0

    cdef int _reserve(self, int64_t extra) except -1:
        cdef uint64_t* old_keys
        cdef int64_t* old_counts
        cdef int64_t old_cap, i, new_cap
        if 2 * (self.size + extra) <= self.cap:
            return 0
        old_keys, old_counts, old_cap = self.keys, self.counts, self.cap
        new_cap = self.cap
        while 2 * (self.size + extra) > new_cap:
            new_cap *= 2
        self.keys = NULL
        self.counts = NULL
        try:
            self._alloc(new_cap)
            with nogil:
                for i in range(old_cap):
                    if old_keys[i] != _EMPTY:
                        self._add(old_keys[i], old_counts[i])
        except MemoryError:
            self.keys, self.counts, self.cap = old_keys, old_counts, old_cap
            raise
        free(old_keys)
        free(old_counts)
        return 0

    cdef inline void _add(self, uint64_t key, int64_t c) noexcept nogil:
        cdef int64_t mask = self.cap - 1
        cdef int64_t h = <int64_t>(_mix(key) & <uint64_t>mask)
        while True:
            if self.keys[h] == key:
                self.counts[h] += c
                return
            if self.keys[h] == _EMPTY:
                self.keys[h] = key
                self.counts[h] = c
                self.size += 1
                return
            h = (h + 1) & mask

    def __len__(self):
        return self.size

    def add_chunks(self, list chunks, int order):
        """Count the windows of every chunk (``bytes``)."""
        cdef Py_ssize_t m = len(chunks), ci
        cdef const uint8_t* x
        cdef int64_t n, i, j
        cdef int k, ln
        cdef uint64_t body
        if order < 1 or order > 7:
            raise ValueError(f"order must be in [1, 7], got {order}")
        for ci in range(m):
            if not isinstance(chunks[ci], bytes):
                raise TypeError(f"chunk {ci} must be bytes, got {type(chunks[ci]).__name__}")
        for ci in range(m):
            x = <const uint8_t*>PyBytes_AS_STRING(chunks[ci])
            n = PyBytes_GET_SIZE(chunks[ci])
            i = 0
            while i < n:
                j = i + 65536
                if j > n:
                    j = n
                self._reserve(j - i)
                with nogil:
                    while i < j:
                        body = 0
                        ln = order
                        if n - i < ln:
                            ln = <int>(n - i)
                        for k in range(ln):
                            body |= (<uint64_t>x[i + k]) << (56 - 8 * k)
                        self._add(body | <uint64_t>ln, 1)
                        i += 1

    def add_counts(self, const uint64_t[::1] keys, const int64_t[::1] counts):
        """Add ``counts[i]`` to ``keys[i]`` (merge of shard tables)."""
        cdef int64_t n = keys.shape[0], i = 0, j
        if counts.shape[0] != n:
            raise ValueError("keys and counts must have the same length")
        while i < n:
            j = i + 65536
            if j > n:
                j = n
            self._reserve(j - i)
            with nogil:
                while i < j:
                    self._add(keys[i], counts[i])
                    i += 1

    def export(self, uint64_t[::1] keys_out, int64_t[::1] counts_out):
        """Write the (key, count) pairs, in table order, into arrays of length ``len(self)``."""
        cdef int64_t i, j = 0
        if keys_out.shape[0] != self.size or counts_out.shape[0] != self.size:
            raise ValueError(f"output arrays must have length {self.size}")
        with nogil:
            for i in range(self.cap):
                if self.keys[i] != _EMPTY:
                    keys_out[j] = self.keys[i]
                    counts_out[j] = self.counts[i]
                    j += 1


def expand_windows(const uint64_t[::1] wkeys, const int64_t[::1] wcounts, uint64_t[::1] out_keys,
                   int64_t[::1] out_counts):
    """All n-gram counts from sorted window counts; returns how many were written (sorted, empty gram first).

    ``c(g) = sum of the counts of the windows that start with g``. Sorted windows list the trie of their
    prefixes in pre-order, which is the sorted order of the packed prefixes, so one scan suffices. The output
    arrays need room for ``1 + sum of the window lengths``.
    """
    cdef int64_t n = wkeys.shape[0], i, m = 1, total = 0
    cdef int64_t slot[8]
    cdef int depth = 0, ln, c, j
    cdef uint64_t body, prev = 0, mask
    if wcounts.shape[0] != n:
        raise ValueError("keys and counts must have the same length")
    for i in range(n):
        if i > 0 and wkeys[i] <= wkeys[i - 1]:
            raise ValueError("window keys must be sorted and unique")
        if (wkeys[i] & 0xFF) > 7:
            raise ValueError("window keys must have length <= 7")
        total += (wkeys[i] & 0xFF)
    if out_keys.shape[0] < total + 1 or out_counts.shape[0] < total + 1:
        raise ValueError(f"output arrays need at least {total + 1} entries")
    out_keys[0] = 0
    out_counts[0] = 0
    with nogil:
        for i in range(n):
            ln = <int>(wkeys[i] & 0xFF)
            body = wkeys[i] & ~(<uint64_t>0xFF)
            c = 0
            while c < depth and c < ln and ((body >> (56 - 8 * c)) & 0xFF) == ((prev >> (56 - 8 * c)) & 0xFF):
                c += 1
            for j in range(c + 1, ln + 1):
                mask = (~(<uint64_t>0)) << (64 - 8 * j)
                out_keys[m] = (body & mask) | <uint64_t>j
                out_counts[m] = 0
                slot[j] = m
                m += 1
            depth = ln
            prev = body
            out_counts[0] += wcounts[i]
            for j in range(1, ln + 1):
                out_counts[slot[j]] += wcounts[i]
    return m


# ---------------------------------------------------------------------------------------------
# byte n-gram language-model segmentation (pass 2 of training)
# ---------------------------------------------------------------------------------------------

cdef struct LMSlot:
    uint64_t key
    double value


cdef class BNLMCore:
    """Viterbi segmentation of chunks under a byte n-gram LM (Su, kexue.fm/archives/3956).

    ``keys[i]`` (packed n-grams, ``1 <= |g| <= order``) has emission ``L[i] = log c(g) - log c(g[:-1])``;
    they are held in an open-addressing hash table, so the ``order`` look-ups of one byte are independent.
    """

    cdef LMSlot* table
    cdef int64_t mask
    cdef int order
    cdef bint ensure_unicode

    def __cinit__(self):
        self.table = NULL

    def __init__(self, const uint64_t[::1] keys, const double[::1] L, int order, bint ensure_unicode):
        cdef int64_t n = keys.shape[0], i, cap = 1024, h
        cdef int b
        if order < 1 or order > 7:
            raise ValueError(f"order must be in [1, 7], got {order}")
        if L.shape[0] != n:
            raise ValueError(f"L has {L.shape[0]} entries but there are {n} keys")
        self.order = order
        self.ensure_unicode = ensure_unicode
        while cap < 2 * n:
            cap *= 2
        self.table = <LMSlot*>malloc(cap * sizeof(LMSlot))
        if self.table == NULL:
            raise MemoryError()
        self.mask = cap - 1
        for i in range(cap):
            self.table[i].key = _EMPTY
            self.table[i].value = 0.0
        for i in range(n):
            if (keys[i] & 0xFF) < 1 or (keys[i] & 0xFF) > order:
                raise ValueError(f"key {i} has length {keys[i] & 0xFF}; expected 1..{order}")
            h = <int64_t>(_mix(keys[i]) & <uint64_t>self.mask)
            while self.table[h].key != _EMPTY and self.table[h].key != keys[i]:
                h = (h + 1) & self.mask
            if self.table[h].key == keys[i]:
                raise ValueError("keys must be unique")
            self.table[h].key = keys[i]
            self.table[h].value = L[i]
        for b in range(256):
            if self._get(((<uint64_t>b) << 56) | 1, NULL) == 0:
                raise ValueError(f"the n-gram table must contain every single byte; {bytes([b])!r} is missing")

    def __dealloc__(self):
        free(self.table)

    cdef inline int _get(self, uint64_t key, double* out) noexcept nogil:
        cdef int64_t h = <int64_t>(_mix(key) & <uint64_t>self.mask)
        while True:
            if self.table[h].key == key:
                if out != NULL:
                    out[0] = self.table[h].value
                return 1
            if self.table[h].key == _EMPTY:
                return 0
            h = (h + 1) & self.mask

    def segment(self, bytes chunk):
        """The pieces of one chunk."""
        cdef list out = []
        self._segment(chunk, out, None)
        return out

    def count_pieces(self, list chunks, dict counter=None):
        """Add the piece counts of every chunk into ``counter`` (a dict bytes -> int) and return it."""
        if counter is None:
            counter = {}
        for ch in chunks:
            if not isinstance(ch, bytes):
                raise TypeError(f"chunks must be bytes, got {type(ch).__name__}")
            self._segment(ch, None, counter)
        return counter

    cdef int _segment(self, bytes chunk, list out, dict counter) except -1:
        cdef const uint8_t* x = <const uint8_t*>PyBytes_AS_STRING(chunk)
        cdef int64_t n = PyBytes_GET_SIZE(chunk)
        cdef int order = self.order
        cdef double* buf
        cdef int8_t* routes
        cdef int64_t* starts
        cdef int64_t nstarts, i, k
        cdef PyObject* found
        if n == 0:
            return 0
        buf = <double*>malloc(4 * order * sizeof(double))
        routes = <int8_t*>malloc(n * order * sizeof(int8_t))
        starts = <int64_t*>malloc((n + 1) * sizeof(int64_t))
        try:
            if buf == NULL or routes == NULL or starts == NULL:
                raise MemoryError()
            with nogil:
                nstarts = self._viterbi(x, n, buf, routes, starts)
            for k in range(nstarts):
                piece = PyBytes_FromStringAndSize(<const char*>x + starts[k], starts[k + 1] - starts[k])
                if out is not None:
                    out.append(piece)
                if counter is not None:
                    found = PyDict_GetItem(counter, piece)
                    if found == NULL:
                        PyDict_SetItem(counter, piece, 1)
                    else:
                        PyDict_SetItem(counter, piece, <object>found + 1)
        finally:
            free(buf)
            free(routes)
            free(starts)
        return 0

    cdef inline void _step(self, const double* prev, const double* E, double* cur, int8_t* route) noexcept nogil:
        cdef int order = self.order, j, jp, arg
        cdef double best, c, a, b
        best = prev[0] + E[0]
        arg = 0
        for jp in range(1, order):
            c = prev[jp] + E[0]
            if c > best:
                best = c
                arg = jp
        cur[0] = best
        route[0] = <int8_t>arg
        if order >= 2:
            for j in range(1, order - 1):
                cur[j] = prev[j - 1] + E[j]
                route[j] = <int8_t>(j - 1)
            a = prev[order - 2] + E[order - 1]
            b = prev[order - 1] + E[order - 1]
            if b > a:
                cur[order - 1] = b
                route[order - 1] = <int8_t>(order - 1)
            else:
                cur[order - 1] = a
                route[order - 1] = <int8_t>(order - 2)

    cdef int64_t _viterbi(self, const uint8_t* x, int64_t n, double* buf, int8_t* routes,
                          int64_t* starts) noexcept nogil:
        cdef int order = self.order, j, state
        cdef double* prev = buf
        cdef double* cur = buf + order
        cdef double* E = buf + 2 * order
        cdef double* E2 = buf + 3 * order
        cdef double* tmp
        cdef double unmasked0
        cdef int64_t i, nstarts, k
        cdef uint64_t body
        cdef bint masked, alive
        for i in range(n):
            # E[j] = L(x[i-j..i]); the gram's bytes are packed big-endian, x[i] last
            body = 0
            for j in range(order):
                if i - j < 0:
                    E[j] = -INFINITY
                    continue
                body = (body >> 8) | ((<uint64_t>x[i - j]) << 56)
                if not self._get(body | <uint64_t>(j + 1), &E[j]):
                    E[j] = -INFINITY
            for j in range(1, order):
                if E[j - 1] == -INFINITY:
                    E[j] = -INFINITY
            unmasked0 = E[0]
            masked = self.ensure_unicode and (x[i] & 0xC0) == 0x80
            if masked:
                E[0] = -INFINITY
            if i == 0:
                for j in range(order):
                    cur[j] = E[j]
                if cur[0] == -INFINITY:
                    cur[0] = unmasked0
                routes[0] = 0
            else:
                self._step(prev, E, cur, routes + i * order)
                alive = False
                for j in range(order):
                    if cur[j] > -INFINITY:
                        alive = True
                if not alive:
                    # a character whose n-grams were pruned: continue the current piece through it
                    E2[0] = E[0]
                    for j in range(1, order):
                        E2[j] = E[j] if E[j] > -INFINITY else 0.0
                    self._step(prev, E2, cur, routes + i * order)
                    alive = False
                    for j in range(order):
                        if cur[j] > -INFINITY:
                            alive = True
                    if not alive:
                        E2[0] = unmasked0
                        self._step(prev, E2, cur, routes + i * order)
            tmp = prev
            prev = cur
            cur = tmp
        # prev holds the last column
        state = 0
        for j in range(1, order):
            if prev[j] > prev[state]:
                state = j
        nstarts = 0
        i = n - 1
        while i >= 0:
            if state == 0 or i == 0:
                starts[nstarts] = i
                nstarts += 1
            if i > 0:
                state = routes[i * order + state]
            i -= 1
        # starts were collected backwards; reverse and close with n
        for k in range(nstarts // 2):
            i = starts[k]
            starts[k] = starts[nstarts - 1 - k]
            starts[nstarts - 1 - k] = i
        starts[nstarts] = n
        return nstarts
