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
  ``(position, state)``, its n-grams in a forward double-array trie) used to train the vocabulary. The
  forward pass is plain C in this file (``kx_lm_forward``), compiled once per order so that its loops
  over the states unroll.

Randomness comes from xoshiro256** seeded by splitmix64 from ``(seed, stream)``; uniforms are
``(next >> 11) * 2**-53``.
"""

import gc

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM, PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject
from cpython.pythread cimport PyThread_acquire_lock, PyThread_allocate_lock, PyThread_free_lock, PyThread_release_lock, PyThread_type_lock, WAIT_LOCK
from cpython.ref cimport Py_INCREF
from libc.math cimport INFINITY, NAN, exp, log
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define KX_PREFETCH(p) __builtin_prefetch((p))
    #else
    #define KX_PREFETCH(p) ((void)0)
    #endif
    """
    void KX_PREFETCH(const void* p) noexcept nogil


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    static inline int kx_clz64(unsigned long long x) { return __builtin_clzll(x); }
    #else
    static inline int kx_clz64(unsigned long long x) { int n = 0; while (!(x >> 63)) { x <<= 1; n++; } return n; }
    #endif
    """
    int kx_clz64(uint64_t x) noexcept nogil  # x != 0


cdef extern from *:
    """
    #if defined(__GLIBC__)
    #include <malloc.h>
    static int kx_trim(void) { return malloc_trim(0); }
    #else
    static int kx_trim(void) { return 0; }
    #endif
    """
    int kx_trim() noexcept nogil


cdef extern from *:
    """
    #if defined(__unix__) || defined(__APPLE__)
    #include <sys/mman.h>
    #include <unistd.h>
    #include <string.h>
    static void* kx_map(size_t n) {
        void* p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
    #if defined(MADV_HUGEPAGE)
        /* large tables are accessed at random: huge pages spare most TLB misses */
        if (n >= (4u << 20)) madvise(p, n, MADV_HUGEPAGE);
    #endif
        return p;
    }
    static void kx_unmap(void* p, size_t n) { if (p != NULL) munmap(p, n); }
    /* give the whole pages inside [p, p + n) back to the system; their contents become zero */
    static void kx_discard(void* p, size_t n) {
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        size_t a = ((size_t)p + page - 1) / page * page, b = ((size_t)p + n) / page * page;
        if (b > a) madvise((void*)a, b - a, MADV_DONTNEED);
    }
    #else
    static void* kx_map(size_t n) { return calloc(n, 1); }
    static void kx_unmap(void* p, size_t n) { free(p); }
    static void kx_discard(void* p, size_t n) { }
    #endif
    """
    void* kx_map(size_t n) noexcept nogil
    void kx_unmap(void* p, size_t n) noexcept nogil
    void kx_discard(void* p, size_t n) noexcept nogil


cdef extern from *:
    """
    /* Buffers of 128 KB and more get pages of their own (mmap), given back when freed. Through malloc,
       the free of such a block raises glibc's mmap threshold to its size, after which blocks below it come
       from the heap and stay in the process when freed: during training, about 10 MB of freed memory
       would stay resident. The caller passes the size to free and resize (a NULL pointer has size 0). */
    #define KX_BIG ((size_t)128 << 10)
    static void* kx_alloc(size_t n) {
    #if defined(__unix__) || defined(__APPLE__)
        if (n >= KX_BIG) {
            void* p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            return p == MAP_FAILED ? NULL : p;
        }
    #endif
        return malloc(n > 0 ? n : 1);
    }
    static void kx_free(void* p, size_t n) {
        if (p == NULL) return;
    #if defined(__unix__) || defined(__APPLE__)
        if (n >= KX_BIG) { munmap(p, n); return; }
    #endif
        free(p);
    }
    static void* kx_resize(void* p, size_t old, size_t n) {
        if (p == NULL) return kx_alloc(n);
    #if defined(__unix__) || defined(__APPLE__)
        if (old >= KX_BIG || n >= KX_BIG) {
    #if defined(__linux__) && defined(MREMAP_MAYMOVE)
            if (old >= KX_BIG && n >= KX_BIG) {
                void* q = mremap(p, old, n, MREMAP_MAYMOVE);
                return q == MAP_FAILED ? NULL : q;
            }
    #endif
            void* q = kx_alloc(n);
            if (q == NULL) return NULL;
            memcpy(q, p, old < n ? old : n);
            kx_free(p, old);
            return q;
        }
    #endif
        return realloc(p, n > 0 ? n : 1);
    }
    """
    void* kx_alloc(size_t n) noexcept nogil
    void kx_free(void* p, size_t n) noexcept nogil
    void* kx_resize(void* p, size_t old, size_t n) noexcept nogil


def release_memory():
    """Return the C heap's free memory to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Large tables freed by worker threads otherwise stay in their threads' malloc arenas.
    """
    cdef int r
    with nogil:
        r = kx_trim()
    return bool(r)

# hash-table look-ups run this many positions ahead of their use (independent cache misses overlap)
DEF _AHEAD = 8
DEF _AHEAD_BATCH = 16
DEF _AHEAD_PIECES = 4

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
        kx_free(self.base, self.cap * sizeof(int32_t))
        kx_free(self.check, self.cap * sizeof(int32_t))
        kx_free(self.value, self.cap * sizeof(int32_t))
        kx_free(self.nextfree, (self.cap + 1) * sizeof(int64_t))

    cdef int _grow(self, int64_t need) except -1:
        cdef int64_t new_cap, i
        if need <= self.cap:
            return 0
        new_cap = self.cap if self.cap > 0 else 1024
        while new_cap < need:
            new_cap *= 2
        if new_cap > 2147483000:
            raise MemoryError("double-array trie would exceed 2**31 slots")
        # all four arrays or none: the new ones are allocated before the old ones are given up
        cdef int32_t* base = <int32_t*>kx_alloc(new_cap * sizeof(int32_t))
        cdef int32_t* check = <int32_t*>kx_alloc(new_cap * sizeof(int32_t))
        cdef int32_t* value = <int32_t*>kx_alloc(new_cap * sizeof(int32_t))
        cdef int64_t* nextfree = <int64_t*>kx_alloc((new_cap + 1) * sizeof(int64_t))
        if base == NULL or check == NULL or value == NULL or nextfree == NULL:
            kx_free(base, new_cap * sizeof(int32_t))
            kx_free(check, new_cap * sizeof(int32_t))
            kx_free(value, new_cap * sizeof(int32_t))
            kx_free(nextfree, (new_cap + 1) * sizeof(int64_t))
            raise MemoryError("double-array trie")
        if self.cap > 0:
            memcpy(base, self.base, self.cap * sizeof(int32_t))
            memcpy(check, self.check, self.cap * sizeof(int32_t))
            memcpy(value, self.value, self.cap * sizeof(int32_t))
            memcpy(nextfree, self.nextfree, self.cap * sizeof(int64_t))
        kx_free(self.base, self.cap * sizeof(int32_t))
        kx_free(self.check, self.cap * sizeof(int32_t))
        kx_free(self.value, self.cap * sizeof(int32_t))
        kx_free(self.nextfree, (self.cap + 1) * sizeof(int64_t))
        self.base, self.check, self.value, self.nextfree = base, check, value, nextfree
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
        if self.cap > 0:
            raise ValueError("this DoubleArray is built already (build a new one)")
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
        kx_free(self.nextfree, (self.cap + 1) * sizeof(int64_t))
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
    import numpy as np

    cdef DoubleArray trie = DoubleArray()
    rev = [k[::-1] for k in keys]
    order = sorted(range(len(rev)), key=rev.__getitem__)
    ordered = [rev[i] for i in order]
    offsets = np.zeros(len(ordered) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, ordered), np.int64, count=len(ordered)), out=offsets[1:])
    trie.build(b"".join(ordered), offsets, np.array(order, dtype=np.int32))
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
                      double* score, double* mult, int64_t* back, int32_t* piece, int32_t* out, double* cc,
                      int64_t* cp, int32_t* cv) noexcept nogil:
    """Decode (or sample) one chunk ``x[0:n]``; write piece indices to ``out``; return their number.

    Sampling draws ``back[e] = s`` with probability ``Z[s] exp(alpha*l) / Z[e]`` -- the law of the weighted
    reservoir of post 9811 -- by one inverse-CDF draw over the candidates of ``e``. ``Z[e]`` is held as
    ``exp(score[e]) * mult[e]``: ``score[e]`` the largest log-weight ``r = score[s] + alpha*l`` of a
    candidate and ``mult[e] >= 1`` the sum of ``mult[s] * exp(r - score[e])``, folded into ``score`` (one
    log) only when it passes 1e30. So a position costs one uniform and one exp per candidate other than
    the largest, and no log (instead of one uniform, one logaddexp and one exp per edge).
    """
    cdef int64_t e, p, cnt, i, k, j
    cdef int32_t node, t, v, tmp
    cdef double best, c, cmax, w, u, acc
    cdef int64_t bs
    cdef int32_t bp
    score[0] = 0.0
    mult[0] = 1.0
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
                w = mult[cp[0]]
                j = 0
            else:
                w = 0.0
                for j in range(k):
                    # exp(0) is exactly 1: the largest candidate (about one in k) needs no exp
                    cc[j] = mult[cp[j]] * (1.0 if cc[j] == cmax else exp(cc[j] - cmax))
                    w += cc[j]
                best = cmax
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
            if w > 1e30:
                best = best + log(w)
                w = 1.0
            mult[e] = w
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
    double* mult
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
        nout += _lattice(m, x + a, b - a, sample, alpha, rng, w.score, w.mult, w.back, w.piece, out + nout, w.cc,
                         w.cp, w.cv)
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
        free(self.b.mult)
        free(self.b.back)
        free(self.b.piece)
        free(self.b.cc)
        free(self.b.cp)
        free(self.b.cv)
        free(self.out)

    cdef int reserve(self, int64_t n, int64_t depth) except -1:
        if n > self.cap:
            self.b.score = <double*>_xrealloc(self.b.score, (n + 1) * sizeof(double))
            self.b.mult = <double*>_xrealloc(self.b.mult, (n + 1) * sizeof(double))
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


cdef list _int_list(const int32_t* a, int64_t n, int32_t offset, int32_t bos, int32_t eos, list ints):
    """``[bos] + [a[i] + offset] + [eos]`` (bos/eos only when >= 0) as a list of Python ints, reusing the
    int objects of ``ints`` (``ints[k] == k + offset``) instead of allocating one per token."""
    cdef int64_t extra = (1 if bos >= 0 else 0) + (1 if eos >= 0 else 0)
    cdef list out = PyList_New(n + extra)
    cdef int64_t i, j = 0
    cdef object o
    cdef PyObject* cached
    if bos >= 0:
        o = bos
        Py_INCREF(o)
        PyList_SET_ITEM(out, j, o)
        j += 1
    for i in range(n):
        cached = PyList_GET_ITEM(ints, a[i])
        Py_INCREF(<object>cached)
        PyList_SET_ITEM(out, j, <object>cached)
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
    cdef list _ints  # Python ints ``k + _ints_offset`` for every piece index ``k``
    cdef int32_t _ints_offset

    def __cinit__(self):
        self.logp = NULL
        self._ints = None
        self._ints_offset = 0

    cdef list _ids(self, int32_t offset):
        if self._ints is None or self._ints_offset != offset:
            self._ints = list(range(offset, offset + self.num_pieces))
            self._ints_offset = offset
        return self._ints

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

    def set_logp(self, const double[::1] logp):
        """Replace the log-probabilities; ``-inf`` removes a piece (every single byte must stay finite)."""
        cdef Py_ssize_t i, n = self.num_pieces
        cdef int32_t v
        if logp.shape[0] != n:
            raise ValueError(f"logp has {logp.shape[0]} entries but there are {n} pieces")
        for i in range(n):
            if logp[i] != logp[i] or logp[i] == INFINITY:
                raise ValueError(f"logp[{i}] must be finite or -inf, got {logp[i]}")
        for i in range(256):
            v = self.trie.lookup(bytes([i]))
            if logp[v] == -INFINITY:
                raise ValueError(f"the single byte {bytes([i])!r} cannot be removed")
        for i in range(n):
            self.logp[i] = logp[i]

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
        return _int_list(w.out, cnt, offset, bos, eos, self._ids(offset))

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
            ints = self._ids(offset)
            # lists of ints hold no cycles: keep the cyclic GC from re-scanning them while they are built
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                result = PyList_New(m)
                pos = 0
                for i in range(m):
                    o = _int_list(outs + pos, counts[i], offset, bos, eos, ints)
                    Py_INCREF(o)
                    PyList_SET_ITEM(result, i, o)
                    pos += counts[i]
            finally:
                if gc_was_enabled:
                    gc.enable()
            return result
        finally:
            free(ptrs)
            free(lens)
            free(counts)
            free(outs)

    cdef inline void _split_one(self, const uint8_t* x, int64_t n, int64_t weight, _Buffers* b,
                                int32_t* pieces, int64_t* out) noexcept nogil:
        """Decode ``x[0:n]`` (no chunking, into ``pieces``) and add ``weight`` to ``out`` for every piece
        used."""
        cdef int64_t cnt = _encode(&self.lat, x, n, False, False, 0.0, NULL, b, pieces), j
        for j in range(cnt):
            out[pieces[j]] += weight

    def split_counts(self, list keys, const int64_t[::1] weights, int64_t[::1] out):
        """Segment each ``keys[i]`` (no chunking) and add ``weights[i]`` to ``out`` for every piece used."""
        cdef Py_ssize_t m = len(keys), i
        cdef int64_t maxn = 0, n
        cdef const uint8_t** ptrs = NULL
        cdef int64_t* lens = NULL
        cdef _Work w = _Work()
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
            with nogil:
                for i in range(m):
                    self._split_one(ptrs[i], lens[i], weights[i], &w.b, w.out, &out[0])
        finally:
            free(ptrs)
            free(lens)

    def split_spans(self, const uint8_t[::1] buf, const int64_t[::1] starts, const int64_t[::1] lens,
                    const int64_t[::1] weights, int64_t[::1] out):
        """:meth:`split_counts` of the strings ``buf[starts[i]:starts[i] + lens[i]]`` (no ``bytes`` objects)."""
        cdef Py_ssize_t m = starts.shape[0], i
        cdef int64_t maxn = 0, nb = buf.shape[0]
        cdef _Work w = _Work()
        cdef const uint8_t* base
        if lens.shape[0] != m or weights.shape[0] != m:
            raise ValueError(f"starts, lens and weights must have the same length ({m}, {lens.shape[0]}, "
                             f"{weights.shape[0]})")
        if out.shape[0] != self.num_pieces:
            raise ValueError(f"out must have {self.num_pieces} entries, got {out.shape[0]}")
        for i in range(m):
            if starts[i] < 0 or lens[i] < 0 or starts[i] + lens[i] > nb:
                raise ValueError(f"span {i} ({starts[i]}, {lens[i]}) is outside the buffer of {nb} bytes")
            if lens[i] > maxn:
                maxn = lens[i]
        if m == 0:
            return
        w.reserve(maxn, self.trie.max_depth)
        base = &buf[0] if nb > 0 else NULL
        with nogil:
            for i in range(m):
                self._split_one(base + starts[i], lens[i], weights[i], &w.b, w.out, &out[0])

    def log_partition(self, bytes data, double alpha):
        """``log Z_alpha(data)`` of the unchunked lattice (sum over all segmentations of exp(alpha*S))."""
        cdef const uint8_t* x = <const uint8_t*>PyBytes_AS_STRING(data)
        cdef int64_t n = PyBytes_GET_SIZE(data)
        cdef _Work w = _Work()
        cdef Rng rng
        w.reserve(n, self.trie.max_depth)
        _rng_seed(&rng, 0, 0)
        _encode(&self.lat, x, n, False, True, alpha, &rng, &w.b, w.out)
        return w.b.score[n] + log(w.b.mult[n]) if n > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# n-gram counting (pass 1 of training)
# ---------------------------------------------------------------------------------------------

cdef uint64_t _EMPTY = 0xFFFFFFFFFFFFFFFFULL
cdef uint64_t _NO_WINDOW = 0  # empty slot of a window table: a window has at least one byte

# training chunks: the defaults of kexue.tokenizers.text
cdef enum:
    _MAX_CHUNK_CHARS = 10000
    _MAX_CHUNK_NEWLINES = 100


cdef inline uint64_t _mix(uint64_t key) noexcept nogil:
    cdef uint64_t z = key ^ (key >> 29)
    z *= <uint64_t>0xBF58476D1CE4E5B9ULL
    return z ^ (z >> 32)


cdef inline int64_t _next_chunk(const uint8_t* x, int64_t a, int64_t n, int64_t max_chars,
                                int64_t max_newlines) noexcept nogil:
    """End of the training chunk of UTF-8 ``x`` that starts at ``a``.

    The same split as the regex ``.{0,C}\n{1,N}|.{1,C}`` on the decoded text: at most ``C`` characters
    other than a newline, then (only if a newline follows) up to ``N`` newlines. Characters are counted
    as bytes that are not UTF-8 continuation bytes.
    """
    cdef int64_t b = a, chars = 0, nl = 0
    while b < n and x[b] != 10:
        if (x[b] & 0xC0) != 0x80:
            if chars == max_chars:
                return b
            chars += 1
        b += 1
    while b < n and x[b] == 10 and nl < max_newlines:
        b += 1
        nl += 1
    return b


def split_training_chunks(bytes data, int64_t max_chars=_MAX_CHUNK_CHARS,
                          int64_t max_newlines=_MAX_CHUNK_NEWLINES):
    """``(start, end)`` of the training chunks of UTF-8 ``data`` (see ``kexue.tokenizers.text``)."""
    cdef const uint8_t* x = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef int64_t n = PyBytes_GET_SIZE(data), a = 0, b
    if max_chars < 1 or max_newlines < 1:
        raise ValueError("max_chars and max_newlines must be >= 1")
    out = []
    while a < n:
        b = _next_chunk(x, a, n, max_chars, max_newlines)
        out.append((a, b))
        a = b
    return out


cdef int _bytes_list(list items, str what, const uint8_t*** ptrs, int64_t** lens) except -1:
    """Pointers and sizes of a list of ``bytes`` (the list must outlive their use)."""
    cdef Py_ssize_t m = len(items), i
    for i in range(m):
        if not isinstance(items[i], bytes):
            raise TypeError(f"{what} {i} must be bytes, got {type(items[i]).__name__}")
    ptrs[0] = <const uint8_t**>malloc((m + 1) * sizeof(uint8_t*))
    lens[0] = <int64_t*>malloc((m + 1) * sizeof(int64_t))
    if ptrs[0] == NULL or lens[0] == NULL:
        free(ptrs[0])
        free(lens[0])
        raise MemoryError()
    for i in range(m):
        ptrs[0][i] = <const uint8_t*>PyBytes_AS_STRING(items[i])
        lens[0][i] = PyBytes_GET_SIZE(items[i])
    return 0


cdef int _radix_sort_pairs(uint64_t* keys, int64_t* vals, int64_t n) noexcept nogil:
    """Sort ``keys`` ascending, moving ``vals`` along (LSD radix, 8 bits a pass, passes with one bucket
    skipped). Returns -1 when the scratch buffers cannot be allocated."""
    cdef uint64_t* k2
    cdef int64_t* v2
    cdef uint64_t* tk
    cdef int64_t* tv
    cdef int64_t count[256]
    cdef int64_t i, pos, c
    cdef int shift, b, nonzero
    if n < 2:
        return 0
    k2 = <uint64_t*>kx_alloc(n * sizeof(uint64_t))
    v2 = <int64_t*>kx_alloc(n * sizeof(int64_t))
    if k2 == NULL or v2 == NULL:
        kx_free(k2, n * sizeof(uint64_t))
        kx_free(v2, n * sizeof(int64_t))
        return -1
    tk, tv = keys, vals
    for shift in range(0, 64, 8):
        memset(count, 0, sizeof(count))
        for i in range(n):
            count[(tk[i] >> shift) & 0xFF] += 1
        nonzero = 0
        for b in range(256):
            if count[b] != 0:
                nonzero += 1
        if nonzero == 1:
            continue
        pos = 0
        for b in range(256):
            c = count[b]
            count[b] = pos
            pos += c
        for i in range(n):
            b = <int>((tk[i] >> shift) & 0xFF)
            k2[count[b]] = tk[i]
            v2[count[b]] = tv[i]
            count[b] += 1
        tk, k2 = k2, tk
        tv, v2 = v2, tv
    if tk != keys:  # the sorted data sits in the scratch buffers
        for i in range(n):
            keys[i] = tk[i]
            vals[i] = tv[i]
        kx_free(tk, n * sizeof(uint64_t))
        kx_free(tv, n * sizeof(int64_t))
    else:
        kx_free(k2, n * sizeof(uint64_t))
        kx_free(v2, n * sizeof(int64_t))
    return 0


cdef struct WinSlot:
    uint64_t key
    int64_t count


ctypedef fused _Sortable:
    WinSlot   # sorted by its key
    uint64_t  # a main-table word: sorted by its window bytes, the high bits


cdef inline uint64_t _sort_key(_Sortable v) noexcept nogil:
    if _Sortable is WinSlot:
        return v.key
    else:
        return v


cdef int _sort_inplace(_Sortable* a, int64_t n, int shift, int low) noexcept nogil:
    """Sort by key in place, without scratch memory: MSD radix sort ("American flag" sort) on the byte at
    ``shift``, then the bytes below it down to the one at ``low``; small ranges by insertion sort. Always
    returns 0."""
    cdef int64_t count[256]
    cdef int64_t nxt[256]
    cdef int64_t end[256]
    cdef int64_t i, j, pos
    cdef int b, d
    cdef _Sortable v, t
    if n < 32:
        for i in range(1, n):
            v = a[i]
            j = i - 1
            while j >= 0 and _sort_key(a[j]) > _sort_key(v):
                a[j + 1] = a[j]
                j -= 1
            a[j + 1] = v
        return 0
    memset(count, 0, sizeof(count))
    for i in range(n):
        count[(_sort_key(a[i]) >> shift) & 0xFF] += 1
    pos = 0
    for b in range(256):
        nxt[b] = pos
        pos += count[b]
        end[b] = pos
    for b in range(256):
        while nxt[b] < end[b]:
            v = a[nxt[b]]
            d = <int>((_sort_key(v) >> shift) & 0xFF)
            while d != b:
                t = a[nxt[d]]
                a[nxt[d]] = v
                nxt[d] += 1
                v = t
                d = <int>((_sort_key(v) >> shift) & 0xFF)
            a[nxt[b]] = v
            nxt[b] += 1
    if shift > low:
        pos = 0
        for b in range(256):
            if count[b] > 1:
                _sort_inplace(a + pos, count[b], shift - 8, low)
            pos += count[b]
    return 0


cdef struct _Pairs:
    # a growing list of (key, count) pairs (kx_alloc'd)
    WinSlot* items
    int64_t n
    int64_t cap


cdef inline int _pairs_push(_Pairs* p, uint64_t key, int64_t count) noexcept nogil:
    cdef void* tmp
    cdef int64_t cap
    if p.n == p.cap:
        cap = 2 * p.cap if p.cap > 0 else 1024
        tmp = kx_resize(p.items, p.cap * sizeof(WinSlot), cap * sizeof(WinSlot))
        if tmp == NULL:
            return -1
        p.items = <WinSlot*>tmp
        p.cap = cap
    p.items[p.n].key = key
    p.items[p.n].count = count
    p.n += 1
    return 0


cdef inline void _pairs_free(_Pairs* p) noexcept nogil:
    kx_free(p.items, p.cap * sizeof(WinSlot))
    p.items, p.n, p.cap = NULL, 0, 0


cdef struct _Scan:
    # the post-order scan of sorted windows: the open grams key[1..depth] (prefixes of the last window)
    # and their counts so far
    int64_t cnt[8]
    uint64_t key[8]
    int depth
    uint64_t prev
    int64_t min_count
    _Pairs* out
    int64_t* small


cdef inline void _scan_init(_Scan* s, int64_t min_count, _Pairs* out, int64_t* small) noexcept nogil:
    s.depth = 0
    s.prev = 0
    s.min_count = min_count
    s.out = out
    s.small = small


cdef inline int _scan_close(_Scan* s, int c) noexcept nogil:
    """Close the open grams longer than ``c`` bytes (deepest first): their counts are final."""
    cdef int j = s.depth
    while j > c:
        if j == 1:
            s.small[1 + (s.key[1] >> 56)] += s.cnt[1]
        elif s.cnt[j] >= s.min_count:
            if _pairs_push(s.out, s.key[j], s.cnt[j]) < 0:
                return -1
        j -= 1
    s.depth = c
    return 0


cdef inline int _scan_push(_Scan* s, uint64_t key, int64_t count) noexcept nogil:
    """The next window of the sorted stream (strictly greater than the last one)."""
    cdef int ln = <int>(key & 0xFF), c, j
    cdef uint64_t body = key & ~(<uint64_t>0xFF)
    cdef uint64_t diff = body ^ s.prev
    # bytes in common with the previous window, at most the open depth and this window's length
    c = 8 if diff == 0 else kx_clz64(diff) >> 3
    if c > s.depth:
        c = s.depth
    if c > ln:
        c = ln
    if _scan_close(s, c) < 0:
        return -1
    for j in range(c + 1, ln + 1):
        s.key[j] = (body & ((~(<uint64_t>0)) << (64 - 8 * j))) | <uint64_t>j
        s.cnt[j] = 0
    s.depth = ln
    s.prev = body
    s.small[0] += count
    for j in range(1, ln + 1):
        s.cnt[j] += count
    return 0


cdef int _prune_scan(const WinSlot* w, int64_t n, int64_t min_count, _Pairs* out,
                     int64_t* small) noexcept nogil:
    """Post-order scan of sorted windows: append the grams with ``|g| >= 2`` and ``c(g) >= min_count`` to
    ``out``; add the counts of the empty gram (number of windows) and of the single bytes to ``small[0]``
    and ``small[1 + byte]``. -1 on allocation failure."""
    cdef _Scan s
    cdef int64_t i
    _scan_init(&s, min_count, out, small)
    for i in range(n):
        if _scan_push(&s, w[i].key, w[i].count) < 0:
            return -1
    return _scan_close(&s, 0)


cdef int _emit_small(_Pairs* out, const int64_t* small) noexcept nogil:
    """Append the single bytes seen (``small[1 + b] > 0``) and the empty gram (key 0)."""
    cdef int b
    for b in range(256):
        if small[1 + b] > 0 and _pairs_push(out, ((<uint64_t>b) << 56) | 1, small[1 + b]) < 0:
            return -1
    return _pairs_push(out, 0, small[0])


cdef struct WinTable:
    # one open-addressing table of (key, count) slots: zero-filled mapping, empty slot = key 0, load <= 0.7
    WinSlot* slots
    int64_t cap
    int64_t size
    size_t mapped  # bytes of the slots' memory mapping


cdef int _wt_alloc(WinTable* t, int64_t cap) noexcept nogil:
    # zero-filled pages: every slot starts empty (key 0) without being touched
    cdef WinSlot* slots = <WinSlot*>kx_map(cap * sizeof(WinSlot))
    if slots == NULL:
        return -1
    t.slots, t.cap, t.size, t.mapped = slots, cap, 0, cap * sizeof(WinSlot)
    return 0


cdef void _wt_free(WinTable* t) noexcept nogil:
    kx_unmap(t.slots, t.mapped)
    t.slots, t.cap, t.size, t.mapped = NULL, 0, 0, 0


cdef inline int _wt_put(WinTable* t, uint64_t key, int64_t c) noexcept nogil:
    """Add ``c`` to ``key``; 1 if the key is new."""
    cdef int64_t mask = t.cap - 1
    cdef int64_t h = <int64_t>(_mix(key) & <uint64_t>mask)
    while True:
        if t.slots[h].key == key:
            t.slots[h].count += c
            return 0
        if t.slots[h].key == _NO_WINDOW:
            t.slots[h].key = key
            t.slots[h].count = c
            t.size += 1
            return 1
        h = (h + 1) & mask


cdef inline int64_t _wt_get(const WinTable* t, uint64_t key) noexcept nogil:
    """The count of ``key`` (0 if absent)."""
    cdef int64_t mask = t.cap - 1
    cdef int64_t h = <int64_t>(_mix(key) & <uint64_t>mask)
    while True:
        if t.slots[h].key == key:
            return t.slots[h].count
        if t.slots[h].key == _NO_WINDOW:
            return 0
        h = (h + 1) & mask


cdef int _wt_grow(WinTable* t) noexcept nogil:
    """Double the table. The old slots are re-inserted block by block and each block's pages are given
    back as soon as it is done, so growing needs the new table plus one block, not both."""
    cdef WinTable old = t[0]
    cdef int64_t i, lo
    cdef int64_t block = 1 << 16
    if _wt_alloc(t, 2 * old.cap) < 0:
        t[0] = old
        return -1
    lo = 0
    while lo < old.cap:
        for i in range(lo, min(lo + block, old.cap)):
            if i + _AHEAD_BATCH < old.cap and old.slots[i + _AHEAD_BATCH].key != _NO_WINDOW:
                KX_PREFETCH(&t.slots[<int64_t>(_mix(old.slots[i + _AHEAD_BATCH].key) & <uint64_t>(t.cap - 1))])
            if old.slots[i].key != _NO_WINDOW:
                _wt_put(t, old.slots[i].key, old.slots[i].count)
        kx_discard(&old.slots[lo], min(block, old.cap - lo) * sizeof(WinSlot))
        lo += block
    kx_unmap(old.slots, old.mapped)
    return 0


cdef inline int _wt_add(WinTable* t, uint64_t key, int64_t c) noexcept nogil:
    """Add ``c`` to ``key``: 1 if the key is new, 0 if not, -1 if the table could not grow."""
    if 10 * (t.size + 1) > 7 * t.cap:
        if _wt_grow(t) < 0:
            return -1
    return _wt_put(t, key, c)


cdef int64_t _wt_compact(WinTable* t) noexcept nogil:
    """Move the used slots to the front (table order) and give back the pages past them; returns their
    number. The hash layout is gone: only ``_wt_free`` may follow."""
    cdef int64_t i, j = 0
    for i in range(t.cap):  # without a branch: about half the slots are empty, at random
        t.slots[j] = t.slots[i]
        j += t.slots[i].key != _NO_WINDOW
    kx_discard(&t.slots[j], t.mapped - j * sizeof(WinSlot))
    t.cap = 0
    return j


# --- the main window table: one 8-byte word a window ---------------------------------------------
#
# Almost every window of a training text is a whole window of ``order`` bytes (only the last
# ``order - 1`` positions of a chunk are shorter). A table for one length L stores a window as one
# word: its bytes in the high 8L bits (as in the packed key, without the length byte) and its count in
# the low 64 - 8L bits (8 to 56 bits). A count that reaches the field's maximum stays there and the rest
# goes to a side table of (key, count) slots, which also holds the shorter windows. Half the memory of
# (key, count) slots, and half the bytes to move when sorting.

cdef struct WordTable:
    uint64_t* slots  # 0 = empty (an occupied slot has a count >= 1)
    int64_t cap
    int64_t size
    size_t mapped


cdef int _wd_alloc(WordTable* t, int64_t cap) noexcept nogil:
    cdef uint64_t* slots = <uint64_t*>kx_map(cap * sizeof(uint64_t))
    if slots == NULL:
        return -1
    t.slots, t.cap, t.size, t.mapped = slots, cap, 0, cap * sizeof(uint64_t)
    return 0


cdef void _wd_free(WordTable* t) noexcept nogil:
    kx_unmap(t.slots, t.mapped)
    t.slots, t.cap, t.size, t.mapped = NULL, 0, 0, 0


cdef inline int64_t _wd_home(int64_t cap, uint64_t body) noexcept nogil:
    return <int64_t>(_mix(body) & <uint64_t>(cap - 1))


cdef int64_t _wd_compact(WordTable* t) noexcept nogil:
    """As ``_wt_compact``: the used words moved to the front, the pages past them given back."""
    cdef int64_t i, j = 0
    for i in range(t.cap):  # without a branch: about half the slots are empty, at random
        t.slots[j] = t.slots[i]
        j += t.slots[i] != 0
    kx_discard(&t.slots[j], t.mapped - j * sizeof(uint64_t))
    t.cap = 0
    return j


cdef int _wd_grow(WordTable* t, uint64_t cmask) noexcept nogil:
    """Double the table, block by block as ``_wt_grow`` (the words are unique: no look-ups)."""
    cdef WordTable old = t[0]
    cdef int64_t i, lo, h, mask
    cdef int64_t block = 1 << 16
    cdef uint64_t w
    if _wd_alloc(t, 2 * old.cap) < 0:
        t[0] = old
        return -1
    mask = t.cap - 1
    lo = 0
    while lo < old.cap:
        for i in range(lo, min(lo + block, old.cap)):
            if i + _AHEAD_BATCH < old.cap and old.slots[i + _AHEAD_BATCH] != 0:
                KX_PREFETCH(&t.slots[_wd_home(t.cap, old.slots[i + _AHEAD_BATCH] & ~cmask)])
            w = old.slots[i]
            if w != 0:
                h = _wd_home(t.cap, w & ~cmask)
                while t.slots[h] != 0:
                    h = (h + 1) & mask
                t.slots[h] = w
        kx_discard(&old.slots[lo], min(block, old.cap - lo) * sizeof(uint64_t))
        lo += block
    t.size = old.size
    kx_unmap(old.slots, old.mapped)
    return 0


cdef struct WinCounts:
    # the windows of length L in ``main`` (words), every other window and the overflow of the main
    # counts in ``side``; L = 0 until the first window arrives (then everything but that length goes to
    # the side table)
    WordTable main
    WinTable side
    int L
    uint64_t cmask  # the count field of a main word: (1 << (64 - 8 L)) - 1
    int64_t n_over  # side keys of length L (overflow counts, not windows of their own)


cdef inline void _wc_set_order(WinCounts* w, int L) noexcept nogil:
    w.L = L
    w.cmask = ((<uint64_t>1) << (64 - 8 * L)) - 1


cdef inline int _wc_side_add(WinCounts* w, uint64_t key, int64_t c) noexcept nogil:
    cdef int r = _wt_add(&w.side, key, c)
    if r == 1 and <int>(key & 0xFF) == w.L:
        w.n_over += 1
    return -1 if r < 0 else 0


cdef inline int _wc_main_add(WinCounts* w, uint64_t body, uint64_t c) noexcept nogil:
    """Add ``c >= 1`` to the whole window ``body`` (its bytes, no length byte)."""
    cdef WordTable* t = &w.main
    cdef uint64_t cmask = w.cmask
    cdef uint64_t s, f
    cdef int64_t h, mask
    if 10 * (t.size + 1) > 7 * t.cap:
        if _wd_grow(t, cmask) < 0:
            return -1
    mask = t.cap - 1
    h = _wd_home(t.cap, body)
    while True:
        s = t.slots[h]
        if s == 0:
            t.size += 1
            if c <= cmask:
                t.slots[h] = body | c
                return 0
            t.slots[h] = body | cmask
            return _wc_side_add(w, body | <uint64_t>w.L, <int64_t>(c - cmask))
        if (s & ~cmask) == body:
            f = s & cmask
            if c <= cmask - f:
                t.slots[h] = s + c
                return 0
            t.slots[h] = body | cmask
            return _wc_side_add(w, body | <uint64_t>w.L, <int64_t>(c - (cmask - f)))
        h = (h + 1) & mask


cdef inline int _wc_add(WinCounts* w, uint64_t key, int64_t c) noexcept nogil:
    if <int>(key & 0xFF) == w.L:
        return _wc_main_add(w, key & ~(<uint64_t>0xFF), <uint64_t>c)
    return _wc_side_add(w, key, c)


cdef int _wc_add_ones(WinCounts* w, const uint64_t* keys, int64_t n) noexcept nogil:
    """Count each of ``keys`` once, the main slot of the key ``_AHEAD_BATCH`` on prefetched."""
    cdef int64_t i
    for i in range(n):
        if i + _AHEAD_BATCH < n:
            KX_PREFETCH(&w.main.slots[_wd_home(w.main.cap, keys[i + _AHEAD_BATCH] & ~(<uint64_t>0xFF))])
        if _wc_add(w, keys[i], 1) < 0:
            return -1
    return 0


cdef inline int64_t _wc_len(const WinCounts* w) noexcept nogil:
    return w.main.size + w.side.size - w.n_over


# windows are collected in a buffer and counted _FLUSH at a time, the slot of the key _AHEAD_BATCH on
# prefetched
DEF _FLUSH = 4096


cdef inline uint64_t _prefix_hash(uint64_t key) noexcept nogil:
    return _mix(key >> 48)


cdef inline uint64_t _part(uint64_t key, uint64_t parts) noexcept nogil:
    # the high 32 bits of the hash scaled to [0, parts) by a multiplication (no division)
    return ((_prefix_hash(key) >> 32) * parts) >> 32


def window_part(uint64_t key, int parts):
    """The class in ``range(parts)`` of a packed window: a hash of its first two bytes, so every gram of
    two or more bytes has all its windows in one class (see ``NgramTable.add_texts``)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    return _part(key, <uint64_t>parts)


cdef class NgramTable:
    """Counts of the byte *windows* ``x[i:i+order]`` (clipped at the chunk end) at every position ``i``.

    Keys are packed n-grams: ``key(g) = sum_k g[k] << (56 - 8 k) | len(g)`` (bytes big-endian in the high
    56 bits, the length in the low byte), so ``order <= 7``. The count of any n-gram ``g`` with
    ``|g| <= order`` is the total count of the windows that start with ``g`` (:func:`expand_windows`):
    one hash-table update per byte instead of ``order + 1``.

    The windows of the table's length ``order`` (set by the constructor, else by the first ``add_*``) are
    held in an open-addressing table of 8-byte words (the window's bytes and its count; load <= 0.7) in a
    zero-filled mapping (huge pages where the system allows); the few shorter windows, and any count past
    the capacity of a word's count field (``2**(64 - 8 order) - 1``), in a side table of 16-byte slots.
    Windows are collected in batches whose slots are prefetched well ahead of their update: the table is
    far larger than the caches and each update is an independent miss. The table grows without the GIL.
    """

    cdef WinCounts w
    cdef int order0
    cdef uint64_t* buf  # a batch of _FLUSH windows
    cdef int64_t fill
    cdef uint8_t* classes  # class of each first-two-bytes prefix, for classes_of parts (window_part)
    cdef int classes_of

    def __cinit__(self, int64_t capacity=1 << 16, int order=0):
        cdef int64_t cap = 1024
        if order < 0 or order > 7:
            raise ValueError(f"order must be in [1, 7] (or 0: set by the first window), got {order}")
        self.buf = NULL
        self.fill = 0
        self.classes = NULL
        self.classes_of = 0
        self.w.main.slots = NULL
        self.w.main.mapped = 0
        self.w.side.slots = NULL
        self.w.side.mapped = 0
        while 7 * cap < 10 * capacity:
            cap *= 2
        self.order0 = order
        self._alloc(cap)

    cdef int _alloc(self, int64_t cap) except -1:
        if _wd_alloc(&self.w.main, cap) < 0 or _wt_alloc(&self.w.side, 1024) < 0:
            _wd_free(&self.w.main)
            _wt_free(&self.w.side)
            raise MemoryError("n-gram table")
        self.w.n_over = 0
        self.w.L = 0
        self.w.cmask = 0
        if self.order0 > 0:
            _wc_set_order(&self.w, self.order0)
        return 0

    def __dealloc__(self):
        _wd_free(&self.w.main)
        _wt_free(&self.w.side)
        free(self.buf)
        free(self.classes)

    @property
    def order(self):
        """The window length held in the main table (0: not set yet)."""
        return self.w.L

    cdef void _claim_order(self, int L) noexcept:
        # an empty table takes the length of the windows it is about to count
        if self.w.L == 0 and _wc_len(&self.w) == 0:
            _wc_set_order(&self.w, L)

    cdef int _flush(self) noexcept nogil:
        cdef int rc = _wc_add_ones(&self.w, self.buf, self.fill)
        self.fill = 0
        return rc

    cdef int _count_windows(self, const uint8_t* x, int64_t n, int order, int64_t max_chars,
                            int64_t max_newlines, uint64_t part, uint64_t parts) noexcept nogil:
        # chunk by chunk; the window at i is the register w: x[i], x[i+1], ... big-endian, with zero bytes
        # past the end of the chunk, shifted one byte on at each position. With parts > 1, self.parts maps
        # the window's first two bytes to its class.
        cdef int64_t i, a = 0, ce, full
        cdef int k
        cdef uint64_t w, key
        cdef uint64_t top = (~(<uint64_t>0)) << (64 - 8 * order)
        cdef int shift = 64 - 8 * order
        cdef uint64_t* buf = self.buf
        cdef int64_t fill = self.fill
        cdef const uint8_t* classes = self.classes if 1 < parts <= 256 else NULL
        cdef uint8_t mine = <uint8_t>part
        while a < n:
            ce = _next_chunk(x, a, n, max_chars, max_newlines)
            w = 0
            for k in range(order - 1):
                if a + k < ce:
                    w |= (<uint64_t>x[a + k]) << (56 - 8 * k)
            full = ce - order + 1  # positions before this one have a whole window
            i = a
            while i < ce:
                w = (w << 8) & top if i > a else w
                if i + order - 1 < ce:
                    w |= (<uint64_t>x[i + order - 1]) << shift
                key = w | <uint64_t>(order if i < full else ce - i)
                # appended without a branch: the class test is a coin flip the predictor cannot learn
                buf[fill] = key
                if classes != NULL:
                    fill += classes[key >> 48] == mine
                else:
                    fill += parts == 1 or _part(key, parts) == part
                if fill == _FLUSH:
                    self.fill = fill
                    if self._flush() < 0:
                        return -1
                    fill = 0
                i += 1
            a = ce
        self.fill = fill
        return 0

    def __len__(self):
        return _wc_len(&self.w)

    @property
    def nbytes(self):
        """Bytes held by the hash tables."""
        return self.w.main.cap * sizeof(uint64_t) + self.w.side.cap * sizeof(WinSlot)

    cdef int _add_items(self, list items, str what, int order, int64_t max_chars, int64_t max_newlines,
                        uint64_t part, uint64_t parts, bint whole) except -1:
        """Count the windows of every item without the GIL; ``whole``: each item is one chunk."""
        cdef const uint8_t** ptrs = NULL
        cdef int64_t* lens = NULL
        cdef Py_ssize_t m = len(items), ci
        cdef int rc = 0
        if order < 1 or order > 7:
            raise ValueError(f"order must be in [1, 7], got {order}")
        if self.buf == NULL:
            self.buf = <uint64_t*>malloc(_FLUSH * sizeof(uint64_t))
            if self.buf == NULL:
                raise MemoryError("n-gram table")
        if 1 < parts <= 256 and self.classes_of != parts:
            if self.classes == NULL:
                self.classes = <uint8_t*>malloc(65536)
                if self.classes == NULL:
                    raise MemoryError("n-gram table")
            for ci in range(65536):
                self.classes[ci] = <uint8_t>_part((<uint64_t>ci) << 48, parts)
            self.classes_of = parts
        _bytes_list(items, what, &ptrs, &lens)
        self._claim_order(order)
        try:
            with nogil:
                for ci in range(m):
                    if whole:  # caps larger than the chunk never split it
                        rc = self._count_windows(ptrs[ci], lens[ci], order, lens[ci] + 1, lens[ci] + 1, 0, 1)
                    else:
                        rc = self._count_windows(ptrs[ci], lens[ci], order, max_chars, max_newlines, part, parts)
                    if rc < 0:
                        break
                if self._flush() < 0:
                    rc = -1
        finally:
            free(ptrs)
            free(lens)
        if rc < 0:
            raise MemoryError("n-gram table")
        return 0

    def add_chunks(self, list chunks, int order):
        """Count the windows of every chunk (``bytes``); windows never cross a chunk's end."""
        self._add_items(chunks, "chunk", order, 1, 1, 0, 1, True)

    def add_texts(self, list texts, int order, int64_t max_chars=_MAX_CHUNK_CHARS,
                  int64_t max_newlines=_MAX_CHUNK_NEWLINES, int part=0, int parts=1):
        """Count the windows of UTF-8 texts split into training chunks (:func:`split_training_chunks`).

        Equal to ``add_chunks`` of the chunks of every text; runs without the GIL. With ``parts > 1`` only
        the windows of hash class ``part`` (:func:`window_part`) are counted: ``parts`` threads over the
        same texts fill disjoint tables, with no merge.
        """
        if max_chars < 1 or max_newlines < 1:
            raise ValueError("max_chars and max_newlines must be >= 1")
        if parts < 1 or not 0 <= part < parts:
            raise ValueError(f"need 0 <= part < parts, got part={part}, parts={parts}")
        self._add_items(texts, "text", order, max_chars, max_newlines, part, parts, False)

    def add_counts(self, const uint64_t[::1] keys, const int64_t[::1] counts):
        """Add ``counts[i] >= 1`` to the packed window ``keys[i]`` (merge of shard tables)."""
        cdef int64_t n = keys.shape[0], i
        cdef int rc = 0, ln, longest = 0
        if counts.shape[0] != n:
            raise ValueError("keys and counts must have the same length")
        for i in range(n):
            ln = <int>(keys[i] & 0xFF)
            if ln == 0:
                raise ValueError("key 0 (the empty gram) is not a window" if keys[i] == 0 else
                                 f"key {keys[i]:#x} has length 0: not a packed window")
            if ln > 7 or (keys[i] & ~(<uint64_t>0xFF) & ~((~(<uint64_t>0)) << (64 - 8 * ln))) != 0:
                raise ValueError(f"key {keys[i]:#x} is not a packed window (length 1..7, zero bytes past it)")
            if counts[i] < 1:
                raise ValueError(f"counts must be >= 1, got {counts[i]} at {i}")
            longest = max(longest, ln)
        if longest > 0:
            self._claim_order(longest)
        with nogil:
            for i in range(n):
                rc = _wc_add(&self.w, keys[i], counts[i])
                if rc < 0:
                    break
        if rc < 0:
            raise MemoryError("n-gram table")

    def merge(self, NgramTable other not None):
        """Add every count of ``other`` (another thread's table) into this one."""
        cdef int64_t i
        cdef int rc = 0
        cdef WordTable* m = &other.w.main
        cdef WinTable* t = &other.w.side
        cdef uint64_t cmask = other.w.cmask, L = <uint64_t>other.w.L
        if other is self:
            raise ValueError("cannot merge a table into itself")
        if other.w.L > 0:
            self._claim_order(other.w.L)
        with nogil:
            for i in range(m.cap):
                if m.slots[i] != 0:
                    rc = _wc_add(&self.w, (m.slots[i] & ~cmask) | L, <int64_t>(m.slots[i] & cmask))
                    if rc < 0:
                        break
            if rc == 0:
                for i in range(t.cap):
                    if t.slots[i].key != _NO_WINDOW:
                        rc = _wc_add(&self.w, t.slots[i].key, t.slots[i].count)
                        if rc < 0:
                            break
        if rc < 0:
            raise MemoryError("n-gram table")

    def export(self, uint64_t[::1] keys_out, int64_t[::1] counts_out):
        """Write the (key, count) pairs, in table order, into arrays of length ``len(self)``."""
        cdef int64_t i, j = 0, n = len(self)
        cdef WordTable* m = &self.w.main
        cdef WinTable* t = &self.w.side
        cdef uint64_t cmask = self.w.cmask, L = <uint64_t>self.w.L, f
        if keys_out.shape[0] != n or counts_out.shape[0] != n:
            raise ValueError(f"output arrays must have length {n}")
        with nogil:
            for i in range(m.cap):
                if m.slots[i] != 0:
                    keys_out[j] = (m.slots[i] & ~cmask) | L
                    f = m.slots[i] & cmask
                    counts_out[j] = <int64_t>f + (_wt_get(t, keys_out[j]) if f == cmask else 0)
                    j += 1
            for i in range(t.cap):
                if t.slots[i].key != _NO_WINDOW and (t.slots[i].key & 0xFF) != L:
                    keys_out[j] = t.slots[i].key
                    counts_out[j] = t.slots[i].count
                    j += 1

    def export_sorted(self, uint64_t[::1] keys_out, int64_t[::1] counts_out):
        """:meth:`export` sorted by key (radix sort)."""
        cdef int rc
        cdef int64_t n = len(self)
        self.export(keys_out, counts_out)
        with nogil:
            rc = _radix_sort_pairs(&keys_out[0], &counts_out[0], n) if n > 0 else 0
        if rc < 0:
            raise MemoryError("sort of the n-gram table")

    def pruned_grams(self, int64_t min_count):
        """Consume the table: its n-gram counts with ``|g| <= 1`` or ``c(g) >= min_count`` and the empty gram.

        Both tables are compacted and radix-sorted in place, then scanned together in key order (a merge:
        the overflow of a main count meets its window there), as ``prune_windows`` does, without a copy;
        then released. Returns unsorted ``(keys, counts)``, each key once. Exact for a table that holds
        every window of its grams: the whole corpus, or one class of ``add_texts(parts=...)``, where the
        counts of the grams of at most one byte are partial and must be summed over the classes.
        """
        cdef int64_t i, j = 0, nm, ns
        cdef _Pairs out
        cdef _Scan scan
        cdef int64_t small[257]
        cdef WordTable* m = &self.w.main
        cdef WinTable* t = &self.w.side
        cdef uint64_t cmask = self.w.cmask, L = <uint64_t>self.w.L, mk
        cdef int rc = 0
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        memset(small, 0, sizeof(small))
        memset(&out, 0, sizeof(out))
        try:
            with nogil:
                nm = _wd_compact(m)
                ns = _wt_compact(t)
                # words sort by their window bytes (unique), the count field below them is never reached
                _sort_inplace(m.slots, nm, 56, 64 - 8 * self.w.L if self.w.L > 0 else 56)
                _sort_inplace(t.slots, ns, 56, 0)
                _scan_init(&scan, min_count, &out, small)
                i = 0
                while rc == 0 and (i < nm or j < ns):
                    mk = ((m.slots[i] & ~cmask) | L) if i < nm else 0
                    if j >= ns or (i < nm and mk < t.slots[j].key):
                        rc = _scan_push(&scan, mk, <int64_t>(m.slots[i] & cmask))
                        i += 1
                    elif i >= nm or t.slots[j].key < mk:
                        rc = _scan_push(&scan, t.slots[j].key, t.slots[j].count)
                        j += 1
                    else:  # a saturated main count and its overflow
                        rc = _scan_push(&scan, mk, <int64_t>(m.slots[i] & cmask) + t.slots[j].count)
                        i += 1
                        j += 1
                if rc == 0:
                    rc = _scan_close(&scan, 0)
                if rc == 0:
                    rc = _emit_small(&out, small)
            if rc < 0:
                raise MemoryError("pruned n-gram counts")
            return _pairs_to_numpy(&out, False)
        finally:
            _pairs_free(&out)
            self.clear()

    def clear(self):
        """Drop every count and release the memory (down to 1024 slots)."""
        _wd_free(&self.w.main)
        _wt_free(&self.w.side)
        self.fill = 0
        self._alloc(1024)


cdef tuple _pairs_to_numpy(const _Pairs* p, bint sort):
    """``(keys, counts)`` arrays of the pairs (sorted by key with ``sort``)."""
    import numpy as np

    cdef uint64_t[::1] kv
    cdef int64_t[::1] cv
    cdef int64_t i, m = p.n
    cdef int rc = 0
    keys = np.empty(m, np.uint64)
    counts = np.empty(m, np.int64)
    kv = keys
    cv = counts
    if m > 0:
        with nogil:
            for i in range(m):
                kv[i] = p.items[i].key
                cv[i] = p.items[i].count
            if sort:
                rc = _radix_sort_pairs(&kv[0], &cv[0], m)
    if rc < 0:
        raise MemoryError("sort")
    return keys, counts


def sort_pairs(uint64_t[::1] keys, int64_t[::1] counts):
    """Sort ``keys`` in place, ascending, moving ``counts`` along (radix sort)."""
    cdef int rc = 0
    cdef int64_t n = keys.shape[0]
    if counts.shape[0] != n:
        raise ValueError("keys and counts must have the same length")
    if n > 1:
        with nogil:
            rc = _radix_sort_pairs(&keys[0], &counts[0], n)
    if rc < 0:
        raise MemoryError("sort")


def prune_windows(const uint64_t[::1] wkeys, const int64_t[::1] wcounts, int64_t min_count):
    """The kept n-gram counts from sorted window counts, as sorted ``(keys, counts)`` arrays.

    Same result as :func:`expand_windows` followed by keeping the grams with ``|g| <= 1`` or
    ``c(g) >= min_count``, without materialising the unkept ones: a gram's count is final when the scan
    over the sorted windows leaves its subtree (post-order), and it is emitted then.
    """
    cdef int64_t n = wkeys.shape[0], i
    cdef WinSlot* w
    cdef _Pairs out
    cdef int64_t small[257]
    cdef int rc = 0
    if wcounts.shape[0] != n:
        raise ValueError("keys and counts must have the same length")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    for i in range(n):
        if i > 0 and wkeys[i] <= wkeys[i - 1]:
            raise ValueError("window keys must be sorted and unique")
        if (wkeys[i] & 0xFF) > 7:
            raise ValueError("window keys must have length <= 7")
    w = <WinSlot*>malloc((n + 1) * sizeof(WinSlot))
    if w == NULL:
        raise MemoryError()
    memset(small, 0, sizeof(small))
    memset(&out, 0, sizeof(out))
    try:
        with nogil:
            for i in range(n):
                w[i].key = wkeys[i]
                w[i].count = wcounts[i]
            rc = _prune_scan(w, n, min_count, &out, small)
            if rc == 0:
                rc = _emit_small(&out, small)
        if rc < 0:
            raise MemoryError("pruned n-gram counts")
        return _pairs_to_numpy(&out, True)
    finally:
        free(w)
        _pairs_free(&out)


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
# piece counts (pass 2 of training)
# ---------------------------------------------------------------------------------------------

cdef struct PieceSlot:
    uint64_t hash
    int64_t off
    int64_t length
    int64_t count


cdef inline uint64_t _hash_bytes(const uint8_t* p, int64_t n) noexcept nogil:
    cdef uint64_t h = (<uint64_t>n) * <uint64_t>0xFF51AFD7ED558CCDULL + <uint64_t>0x9E3779B97F4A7C15ULL
    cdef uint64_t w
    cdef int64_t i = 0
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        h = (h ^ w) * <uint64_t>0xBF58476D1CE4E5B9ULL
        h ^= h >> 31
        i += 8
    w = 0
    while i < n:
        w = (w << 8) | p[i]
        i += 1
    h = (h ^ w) * <uint64_t>0x94D049BB133111EBULL
    return h ^ (h >> 29)


cdef class PieceCounter:
    """Counts of byte strings in an open-addressing hash table with the strings in one arena.

    Used by pass 2 of training instead of a ``dict`` so that counting runs without the GIL and makes no
    Python object per piece occurrence. :meth:`to_dict` converts at the end. Merges *into* a counter take
    its lock, so threads may flush their small counters into one shared total
    (``BNLMCore.count_texts(..., total=...)``).
    """

    cdef PieceSlot* slots
    cdef int64_t cap
    cdef int64_t size
    cdef uint8_t* arena
    cdef int64_t arena_len
    cdef int64_t arena_cap
    cdef PyThread_type_lock lock

    def __cinit__(self):
        self.slots = NULL
        self.arena = NULL
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError("piece counter lock")
        self.cap = 0
        self.arena_cap = 0
        self.slots = <PieceSlot*>kx_alloc(1024 * sizeof(PieceSlot))
        self.arena = <uint8_t*>kx_alloc(1 << 16)
        if self.slots == NULL or self.arena == NULL:
            raise MemoryError("piece counter")
        self.cap = 1024
        self.size = 0
        self.arena_len = 0
        self.arena_cap = 1 << 16
        memset(self.slots, 0xFF, 1024 * sizeof(PieceSlot))

    def __dealloc__(self):
        kx_free(self.slots, self.cap * sizeof(PieceSlot) if self.slots != NULL else 0)
        kx_free(self.arena, self.arena_cap if self.arena != NULL else 0)
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    cdef int _merge_from(self, PieceCounter other) noexcept nogil:
        """Add every count of ``other`` into this counter, holding this counter's lock."""
        cdef int64_t i
        cdef int rc = 0
        PyThread_acquire_lock(self.lock, WAIT_LOCK)
        for i in range(other.cap):
            if other.slots[i].off >= 0:
                if i + _AHEAD_PIECES < other.cap and other.slots[i + _AHEAD_PIECES].off >= 0:
                    self._prefetch(other.slots[i + _AHEAD_PIECES].hash)
                rc = self._add_hashed(other.arena + other.slots[i].off, other.slots[i].length,
                                      other.slots[i].hash, other.slots[i].count)
                if rc < 0:
                    break
        PyThread_release_lock(self.lock)
        return rc

    cdef void _reset(self) noexcept nogil:
        """Drop every count, keeping the memory (for a counter that is flushed and reused)."""
        memset(self.slots, 0xFF, self.cap * sizeof(PieceSlot))
        self.size = 0
        self.arena_len = 0

    cdef int _grow(self) noexcept nogil:
        cdef int64_t new_cap = 2 * self.cap, i, h, mask = new_cap - 1
        cdef PieceSlot* new = <PieceSlot*>kx_alloc(new_cap * sizeof(PieceSlot))
        if new == NULL:
            return -1
        memset(new, 0xFF, new_cap * sizeof(PieceSlot))
        for i in range(self.cap):
            if self.slots[i].off >= 0:
                h = <int64_t>(self.slots[i].hash & <uint64_t>mask)
                while new[h].off >= 0:
                    h = (h + 1) & mask
                new[h] = self.slots[i]
        kx_free(self.slots, self.cap * sizeof(PieceSlot))
        self.slots = new
        self.cap = new_cap
        return 0

    cdef inline int _add(self, const uint8_t* p, int64_t n, int64_t c) noexcept nogil:
        return self._add_hashed(p, n, _hash_bytes(p, n), c)

    cdef inline void _prefetch(self, uint64_t hv) noexcept nogil:
        KX_PREFETCH(&self.slots[<int64_t>(hv & <uint64_t>(self.cap - 1))])

    cdef int _add_hashed(self, const uint8_t* p, int64_t n, uint64_t hv, int64_t c) noexcept nogil:
        # for a given length <= 8 the hash is a bijection of the bytes (xor, odd multiplication and
        # xor-shift are invertible), so an equal hash is an equal piece: no look in the arena
        cdef int64_t h, mask, need, new_arena
        cdef void* tmp
        if 10 * (self.size + 1) > 7 * self.cap:
            if self._grow() < 0:
                return -1
        mask = self.cap - 1
        h = <int64_t>(hv & <uint64_t>mask)
        while self.slots[h].off >= 0:
            if (self.slots[h].hash == hv and self.slots[h].length == n
                    and (n <= 8 or memcmp(self.arena + self.slots[h].off, p, n) == 0)):
                self.slots[h].count += c
                return 0
            h = (h + 1) & mask
        need = self.arena_len + n
        if need > self.arena_cap:
            new_arena = self.arena_cap
            while need > new_arena:
                new_arena *= 2
            tmp = kx_resize(self.arena, self.arena_cap, new_arena)
            if tmp == NULL:
                return -1
            self.arena = <uint8_t*>tmp
            self.arena_cap = new_arena
        memcpy(self.arena + self.arena_len, p, n)
        self.slots[h].hash = hv
        self.slots[h].off = self.arena_len
        self.slots[h].length = n
        self.slots[h].count = c
        self.arena_len += n
        self.size += 1
        return 0

    def __len__(self):
        return self.size

    @property
    def nbytes(self):
        """Bytes held by the table and the arena."""
        return self.cap * sizeof(PieceSlot) + self.arena_cap

    def add(self, bytes piece not None, int64_t count=1):
        """Add ``count`` to ``piece``."""
        if self._add(<const uint8_t*>PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece), count) < 0:
            raise MemoryError("piece counter")

    def add_dict(self, dict counts not None):
        """Add every ``piece -> count`` of a dict."""
        for k, v in counts.items():
            if not isinstance(k, bytes):
                raise TypeError(f"pieces must be bytes, got {type(k).__name__}")
            self.add(k, v)

    def merge(self, PieceCounter other not None):
        """Add every count of ``other`` (another thread's counter)."""
        cdef int rc = 0
        if other is self:
            raise ValueError("cannot merge a counter into itself")
        with nogil:
            rc = self._merge_from(other)
        if rc < 0:
            raise MemoryError("piece counter")

    def clear(self):
        """Drop every count and release the memory (down to the initial size)."""
        cdef PieceSlot* slots = <PieceSlot*>kx_alloc(1024 * sizeof(PieceSlot))
        cdef uint8_t* arena = <uint8_t*>kx_alloc(1 << 16)
        if slots == NULL or arena == NULL:
            kx_free(slots, 1024 * sizeof(PieceSlot))
            kx_free(arena, 1 << 16)
            raise MemoryError("piece counter")
        kx_free(self.slots, self.cap * sizeof(PieceSlot))
        kx_free(self.arena, self.arena_cap)
        self.slots, self.arena = slots, arena
        memset(self.slots, 0xFF, 1024 * sizeof(PieceSlot))
        self.cap, self.size, self.arena_len, self.arena_cap = 1024, 0, 0, 1 << 16

    def packed(self):
        """``(buf, offsets, counts)``: the pieces in table order as one ``bytes`` (piece ``i`` is
        ``buf[offsets[i]:offsets[i + 1]]``) and two ``int64`` arrays; no Python object per piece."""
        import numpy as np

        cdef int64_t i, j = 0, pos = 0
        cdef int64_t[::1] ov
        cdef int64_t[::1] cv
        cdef bytes buf = PyBytes_FromStringAndSize(NULL, self.arena_len)
        cdef uint8_t* out = <uint8_t*>PyBytes_AS_STRING(buf)
        offsets = np.empty(self.size + 1, np.int64)
        counts = np.empty(self.size, np.int64)
        ov = offsets
        cv = counts
        with nogil:
            ov[0] = 0
            for i in range(self.cap):
                if self.slots[i].off >= 0:
                    memcpy(out + pos, self.arena + self.slots[i].off, self.slots[i].length)
                    pos += self.slots[i].length
                    cv[j] = self.slots[i].count
                    j += 1
                    ov[j] = pos
        return buf, offsets, counts

    def items(self):
        """``(pieces, counts)``: a list of ``bytes`` and an ``int64`` array, in table order."""
        import numpy as np

        cdef int64_t i, j = 0
        cdef list keys = PyList_New(self.size)
        cdef int64_t[::1] cv
        cdef object piece
        counts = np.empty(self.size, np.int64)
        cv = counts
        for i in range(self.cap):
            if self.slots[i].off >= 0:
                piece = PyBytes_FromStringAndSize(<const char*>self.arena + self.slots[i].off, self.slots[i].length)
                Py_INCREF(piece)
                PyList_SET_ITEM(keys, j, piece)
                cv[j] = self.slots[i].count
                j += 1
        return keys, counts

    def to_dict(self):
        """``{piece: count}``."""
        cdef int64_t i
        cdef dict out = {}
        for i in range(self.cap):
            if self.slots[i].off >= 0:
                out[PyBytes_FromStringAndSize(<const char*>self.arena + self.slots[i].off,
                                              self.slots[i].length)] = self.slots[i].count
        return out


# ---------------------------------------------------------------------------------------------
# byte n-gram language-model segmentation (pass 2 of training)
# ---------------------------------------------------------------------------------------------

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    /* a node of the forward double-array trie of the segmentation LM: the child of node s by byte c is
       t = nodes[s].base + c if nodes[t].check == s */
    typedef struct { int32_t base; int32_t check; } kx_lmnode;

    #if defined(__GNUC__) || defined(__clang__)
    #define KX_INLINE static inline __attribute__((always_inline))
    #else
    #define KX_INLINE static inline
    #endif

    KX_INLINE void kx_lm_step(int order, const double* prev, const double* E, double* cur, int8_t* route) {
        double best = prev[0] + E[0];
        int arg = 0;
        for (int jp = 1; jp < order; jp++) {
            double c = prev[jp] + E[0];
            if (c > best) { best = c; arg = jp; }
        }
        cur[0] = best;
        route[0] = (int8_t)arg;
        if (order >= 2) {
            for (int j = 1; j < order - 1; j++) { cur[j] = prev[j - 1] + E[j]; route[j] = (int8_t)(j - 1); }
            double a = prev[order - 2] + E[order - 1], b = prev[order - 1] + E[order - 1];
            if (b > a) { cur[order - 1] = b; route[order - 1] = (int8_t)(order - 1); }
            else { cur[order - 1] = a; route[order - 1] = (int8_t)(order - 2); }
        }
    }

    KX_INLINE int kx_any_alive(int order, const double* cur) {
        for (int j = 0; j < order; j++) if (cur[j] > -INFINITY) return 1;
        return 0;
    }

    /* The forward pass of the LM Viterbi over x[0..n) (states j = 0..order-1: x[i] is the (j+1)-th byte of
       the current piece); writes the back-pointers routes[i*order + j] and the last column. Instantiated
       for each order so that the loops over the states unroll. */
    KX_INLINE void kx_lm_forward_impl(int order, const kx_lmnode* nodes, const double* Ls, const uint8_t* x,
                                      int64_t n, int ensure_unicode, int8_t* routes, double* last) {
        int32_t act[8], nxt[8];
        double prev[8], cur[8], E[8], E2[8];
        for (int j = 0; j < order; j++) { act[j] = -1; prev[j] = -INFINITY; }
        for (int64_t i = 0; i < n; i++) {
            const uint8_t c = x[i];
            int8_t* route = routes + i * order;
            /* node of x[i-j..i]: the child by x[i] of the node of x[i-j..i-1], a gram ending at i - 1 */
            nxt[0] = nodes[0].base + c;
            for (int j = 1; j < order; j++) {
                int32_t s = act[j - 1];
                if (s >= 0) {
                    int32_t t = nodes[s].base + c;
                    nxt[j] = nodes[t].check == s ? t : -1;
                } else {
                    nxt[j] = -1;
                }
            }
            /* the nodes looked up at i + 1 are known now: start loading them while this byte is scored */
            if (i + 1 < n) {
                const uint8_t c1 = x[i + 1];
                for (int j = 0; j < order - 1; j++) {
                    if (nxt[j] >= 0) {
                        int32_t t1 = nodes[nxt[j]].base + c1;
                        KX_PREFETCH(&nodes[t1]);
                        KX_PREFETCH(&Ls[t1]);
                    }
                }
            }
            /* E[j] = L(x[i-j..i]) up to the first gram that is not in the LM (NaN: only a prefix of grams) */
            int dead = 0;
            for (int j = 0; j < order; j++) {
                act[j] = nxt[j];
                if (!dead) {
                    if (nxt[j] >= 0) { E[j] = Ls[nxt[j]]; dead = E[j] != E[j]; }
                    else dead = 1;
                }
                if (dead) E[j] = -INFINITY;
            }
            const double unmasked0 = E[0];
            if (ensure_unicode && (c & 0xC0) == 0x80) E[0] = -INFINITY;
            if (i == 0) {
                for (int j = 0; j < order; j++) cur[j] = E[j];
                if (cur[0] == -INFINITY) cur[0] = unmasked0;
                route[0] = 0;
            } else {
                kx_lm_step(order, prev, E, cur, route);
                if (!kx_any_alive(order, cur)) {
                    /* a character whose n-grams were pruned: continue the current piece through it */
                    E2[0] = E[0];
                    for (int j = 1; j < order; j++) E2[j] = E[j] > -INFINITY ? E[j] : 0.0;
                    kx_lm_step(order, prev, E2, cur, route);
                    if (!kx_any_alive(order, cur)) {
                        E2[0] = unmasked0;
                        kx_lm_step(order, prev, E2, cur, route);
                    }
                }
            }
            for (int j = 0; j < order; j++) prev[j] = cur[j];
        }
        for (int j = 0; j < order; j++) last[j] = prev[j];
    }

    static void kx_lm_forward(int order, const kx_lmnode* nodes, const double* Ls, const uint8_t* x, int64_t n,
                              int ensure_unicode, int8_t* routes, double* last) {
        switch (order) {
            case 1: kx_lm_forward_impl(1, nodes, Ls, x, n, ensure_unicode, routes, last); break;
            case 2: kx_lm_forward_impl(2, nodes, Ls, x, n, ensure_unicode, routes, last); break;
            case 3: kx_lm_forward_impl(3, nodes, Ls, x, n, ensure_unicode, routes, last); break;
            case 4: kx_lm_forward_impl(4, nodes, Ls, x, n, ensure_unicode, routes, last); break;
            case 5: kx_lm_forward_impl(5, nodes, Ls, x, n, ensure_unicode, routes, last); break;
            case 6: kx_lm_forward_impl(6, nodes, Ls, x, n, ensure_unicode, routes, last); break;
            default: kx_lm_forward_impl(7, nodes, Ls, x, n, ensure_unicode, routes, last); break;
        }
    }
    """
    ctypedef struct kx_lmnode:
        int32_t base
        int32_t check
    void kx_lm_forward(int order, const kx_lmnode* nodes, const double* Ls, const uint8_t* x, int64_t n,
                       int ensure_unicode, int8_t* routes, double* last) noexcept nogil


cdef class BNLMCore:
    """Viterbi segmentation of chunks under a byte n-gram LM (Su, kexue.fm/archives/3956).

    ``keys[i]`` (packed n-grams, ``1 <= |g| <= order``) has emission ``L[i] = log c(g) - log c(g[:-1])``.
    The grams are held in a forward double-array trie of 8-byte nodes (base, check) with the emissions in
    an array beside them. The grams ending at byte ``i`` are the children, by ``x[i]``, of the trie nodes of
    the grams ending at ``i - 1``, so the ``order`` look-ups of a byte are one independent memory access
    each, with no hashing, and those of byte ``i + 1`` are prefetched while byte ``i`` is scored. Exact for
    any set of grams (a gram that is only a prefix of others has emission NaN in the trie and counts as
    absent), equal to the reference's look-ups.
    """

    cdef kx_lmnode* nodes
    cdef double* Ls  # L(g) of the gram g spelled by the path to each node; NaN where g is only a prefix
    cdef int64_t num_slots
    cdef int order
    cdef bint ensure_unicode

    def __cinit__(self):
        self.nodes = NULL
        self.Ls = NULL

    def __init__(self, const uint64_t[::1] keys, const double[::1] L, int order, bint ensure_unicode):
        import numpy as np

        cdef int64_t n = keys.shape[0], i, t
        cdef DoubleArray trie
        cdef int b
        if order < 1 or order > 7:
            raise ValueError(f"order must be in [1, 7], got {order}")
        if L.shape[0] != n:
            raise ValueError(f"L has {L.shape[0]} entries but there are {n} keys")
        self.order = order
        self.ensure_unicode = ensure_unicode
        cdef bint ordered = True
        cdef int ln, d
        cdef uint64_t key
        cdef uint8_t[::1] bv
        cdef int64_t[::1] ov
        cdef const uint64_t[::1] sv
        for i in range(n):
            ln = <int>(keys[i] & 0xFF)
            if ln < 1 or ln > order:
                raise ValueError(f"key {i} has length {ln}; expected 1..{order}")
            if L[i] != L[i]:
                raise ValueError("L must not contain NaN")
            if i > 0 and keys[i] <= keys[i - 1]:
                ordered = False
        if ordered:  # the trainer's LM: sorted and unique already
            sk = np.asarray(keys)
            idx = np.arange(n, dtype=np.int32)
        else:
            idx = np.argsort(np.asarray(keys), kind="stable").astype(np.int32)
            sk = np.asarray(keys)[idx]
            if n > 1 and bool((sk[1:] == sk[:-1]).any()):
                raise ValueError("keys must be unique")
        # the grams as byte strings in sorted order (packed keys sort as their byte strings)
        sv = sk
        offsets = np.empty(n + 1, np.int64)
        ov = offsets
        ov[0] = 0
        for i in range(n):
            ov[i + 1] = ov[i] + <int64_t>(sv[i] & 0xFF)
        buf = np.empty(max(ov[n], 1), np.uint8)
        bv = buf
        for i in range(n):
            key = sv[i]
            for d in range(<int>(key & 0xFF)):
                bv[ov[i] + d] = <uint8_t>(key >> (56 - 8 * d))
        trie = DoubleArray().build(buf[: ov[n]], offsets, idx)
        # every child slot base + c (c < 256) of a node lies below num_nodes + 256
        self.num_slots = trie.num_nodes + 256
        self.nodes = <kx_lmnode*>kx_alloc(self.num_slots * sizeof(kx_lmnode))
        self.Ls = <double*>kx_alloc(self.num_slots * sizeof(double))
        if self.nodes == NULL or self.Ls == NULL:
            raise MemoryError()
        for t in range(self.num_slots):
            if t < trie.cap:
                self.nodes[t].base = trie.base[t]
                self.nodes[t].check = trie.check[t]
                self.Ls[t] = L[trie.value[t]] if trie.value[t] >= 0 else NAN
            else:
                self.nodes[t].base = 0
                self.nodes[t].check = -1
                self.Ls[t] = NAN
        for b in range(256):
            t = self.nodes[0].base + b
            if self.nodes[t].check != 0 or self.Ls[t] != self.Ls[t]:
                raise ValueError(f"the n-gram table must contain every single byte; {bytes([b])!r} is missing")

    def __dealloc__(self):
        kx_free(self.nodes, self.num_slots * sizeof(kx_lmnode))
        kx_free(self.Ls, self.num_slots * sizeof(double))

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

    def count_texts(self, list texts, PieceCounter counter not None, int64_t max_chars=_MAX_CHUNK_CHARS,
                    int64_t max_newlines=_MAX_CHUNK_NEWLINES, PieceCounter total=None,
                    int64_t flush_at=1 << 14):
        """Segment UTF-8 texts split into training chunks and add the pieces into ``counter``.

        Equal to :meth:`count_pieces` on the chunks of every text (:func:`split_training_chunks`); runs
        without the GIL, so threads with their own counters share one core. With ``total``, ``counter`` is
        a small per-thread buffer: whenever it holds ``flush_at`` pieces it is merged into ``total`` (under
        ``total``'s lock) and emptied, so threads share one large table instead of one each (what is left in
        ``counter`` at the end is the caller's to merge). Counts are the same either way.
        """
        cdef const uint8_t** ptrs = NULL
        cdef int64_t* lens = NULL
        cdef Py_ssize_t m = len(texts), ci
        cdef int rc = 0
        if max_chars < 1 or max_newlines < 1:
            raise ValueError("max_chars and max_newlines must be >= 1")
        if total is not None and (total is counter or flush_at < 1):
            raise ValueError("total must be another counter and flush_at >= 1")
        _bytes_list(texts, "text", &ptrs, &lens)
        try:
            with nogil:
                rc = self._count_many(ptrs, lens, m, counter, max_chars, max_newlines, total, flush_at)
        finally:
            free(ptrs)
            free(lens)
        if rc < 0:
            raise MemoryError("piece counting")

    cdef int _count_many(self, const uint8_t** ptrs, const int64_t* lens, Py_ssize_t m, PieceCounter counter,
                         int64_t max_chars, int64_t max_newlines, PieceCounter total=None,
                         int64_t flush_at=0) noexcept nogil:
        cdef int order = self.order
        cdef double buf[32]
        cdef int8_t* routes = NULL
        cdef int64_t* starts = NULL
        cdef uint64_t* hashes = NULL
        cdef int64_t room = 0, a, e, n, nstarts, k
        cdef Py_ssize_t ci
        cdef const uint8_t* x
        cdef void* tmp
        cdef int rc = 0
        for ci in range(m):
            x = ptrs[ci]
            a = 0
            while a < lens[ci]:
                e = _next_chunk(x, a, lens[ci], max_chars, max_newlines)
                n = e - a
                if n > room:
                    room = 2 * n
                    tmp = realloc(routes, room * order * sizeof(int8_t))
                    if tmp == NULL:
                        rc = -1
                        break
                    routes = <int8_t*>tmp
                    tmp = realloc(starts, (room + 1) * sizeof(int64_t))
                    if tmp == NULL:
                        rc = -1
                        break
                    starts = <int64_t*>tmp
                    tmp = realloc(hashes, (room + 1) * sizeof(uint64_t))
                    if tmp == NULL:
                        rc = -1
                        break
                    hashes = <uint64_t*>tmp
                nstarts = self._viterbi(x + a, n, buf, routes, starts)
                # hash every piece first and warm its slot, then count
                for k in range(nstarts):
                    hashes[k] = _hash_bytes(x + a + starts[k], starts[k + 1] - starts[k])
                    if k < _AHEAD_PIECES:
                        counter._prefetch(hashes[k])
                for k in range(nstarts):
                    if k + _AHEAD_PIECES < nstarts:
                        counter._prefetch(hashes[k + _AHEAD_PIECES])
                    if counter._add_hashed(x + a + starts[k], starts[k + 1] - starts[k], hashes[k], 1) < 0:
                        rc = -1
                        break
                if rc < 0:
                    break
                if total is not None and counter.size >= flush_at:
                    rc = total._merge_from(counter)
                    counter._reset()
                    if rc < 0:
                        break
                a = e
            if rc < 0:
                break
        free(routes)
        free(starts)
        free(hashes)
        return rc

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

    cdef int64_t _viterbi(self, const uint8_t* x, int64_t n, double* buf, int8_t* routes,
                          int64_t* starts) noexcept nogil:
        cdef int order = self.order, j, state
        cdef double* prev = buf
        cdef int64_t i, nstarts, k
        kx_lm_forward(order, self.nodes, self.Ls, x, n, self.ensure_unicode, routes, prev)
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


def conditional_log_probs(const uint64_t[::1] keys, const int64_t[::1] counts, double[::1] out):
    """``out[i - 1] = log c(g_i) - log c(g_i[:-1])`` for sorted unique packed grams ``keys`` (``keys[0]`` the
    empty gram, every prefix of a gram present) with positive ``counts``.

    Sorted packed grams list their prefix trie in pre-order, so the parent of each gram is the last gram
    seen one byte shorter: one scan with a stack of ancestors, no search.
    """
    cdef int64_t n = keys.shape[0], i
    cdef int ln, j
    cdef int64_t stack[8]
    cdef uint64_t mask
    cdef int bad = 0
    if counts.shape[0] != n or out.shape[0] != n - 1:
        raise ValueError("need len(counts) == len(keys) and len(out) == len(keys) - 1")
    if n == 0 or keys[0] != 0:
        raise ValueError("keys[0] must be the empty gram")
    stack[0] = 0
    for j in range(1, 8):
        stack[j] = -1  # no gram of that length seen yet
    with nogil:
        for i in range(n):
            if counts[i] <= 0:
                bad = 1
                break
            if i > 0 and keys[i] <= keys[i - 1]:
                bad = 2
                break
        for i in range(1, n):
            if bad:
                break
            ln = <int>(keys[i] & 0xFF)
            if ln < 1 or ln > 7:
                bad = 3
                break
            # the parent must be the gram on the stack one byte shorter, equal to this gram minus its last byte
            j = stack[ln - 1]
            mask = (~(<uint64_t>0)) << (64 - 8 * (ln - 1)) if ln > 1 else 0
            if j < 0 or (keys[j] & 0xFF) != <uint64_t>(ln - 1) or (keys[j] & ~(<uint64_t>0xFF)) != (keys[i] & mask):
                bad = 4
                break
            stack[ln] = i
            out[i - 1] = log(<double>counts[i]) - log(<double>counts[j])
    if bad == 1:
        raise ValueError("counts must be positive")
    if bad == 2:
        raise ValueError("keys must be sorted and unique")
    if bad == 3:
        raise ValueError("keys must have length 1..7")
    if bad == 4:
        raise ValueError("n-gram counts are inconsistent: a kept n-gram's prefix is missing")
