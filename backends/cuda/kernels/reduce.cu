// Reductions (sum, max, min, argmax, argmin) and cumulative sums.
//
// A reduction sees its input as two strided views: the kept dims (`ks`, one entry per output,
// carrying the storage offset) and the reduced dims (`rs`, offset 0), so element (o, r) lives
// at at(ks, o) + at(rs, r), r being the row-major position in the reduced index space.
//
// Blocks are 2-D, blockDim.x * blockDim.y == 256 with blockDim.x a power of two: each row y
// of a block reduces one output, its blockDim.x threads striding over the reduced range, then
// warp shuffles (and shared memory for rows wider than a warp) combine them, lower lanes
// on the left. The host picks blockDim.x: up to 256 when the reduced
// dims are innermost in memory (coalesced along r), 1 when the kept dims are (coalesced
// along the outputs). With few outputs, gridDim.y splits the reduced range: pass 1 writes
// one accumulator per (output, split) to a scratch buffer and a second kernel (`*_part_*`)
// reduces those in order.
//
// Accumulators (as the CPU): sums in f32 for f16/bf16/f32, f64 for f64, integers in their own
// type (wrapping). Max/min/argmax/argmin keep (value, index) and prefer, in order: a NaN, the
// larger (smaller) value, the smaller index; so ties give the first extremum and a NaN wins
// (torch semantics), whatever the grouping.

#define NONE_IDX 0xffffffffu
#define RM_MAX 1u      // max/argmax (else min/argmin)
#define RM_ARG 2u      // write the index as i64 (else the value in the input dtype)
#define RM_PARTIAL 4u  // write the raw accumulators (pass 1 of a split reduction)

#define RED_THREADS 256

__device__ __forceinline__ u8 acc_add(u8 a, u8 b) { return (u8)((u32)a + (u32)b); }
__device__ __forceinline__ u32 acc_add(u32 a, u32 b) { return a + b; }
__device__ __forceinline__ i64 acc_add(i64 a, i64 b) { return (i64)((u64)a + (u64)b); }
__device__ __forceinline__ float acc_add(float a, float b) { return a + b; }
__device__ __forceinline__ double acc_add(double a, double b) { return a + b; }

template <typename V> __device__ __forceinline__ bool nan_of(V) { return false; }
template <> __device__ __forceinline__ bool nan_of<float>(float v) { return isnan(v); }
template <> __device__ __forceinline__ bool nan_of<double>(double v) { return isnan(v); }

template <typename T> struct SumR {
    typedef typename Compute<T>::type Acc;
    static __device__ __forceinline__ Acc init() { return (Acc)0; }
    static __device__ __forceinline__ Acc load(T x, u32) { return ld<T>(x); }
    static __device__ __forceinline__ Acc combine(Acc a, Acc b, u32) { return acc_add(a, b); }
    static __device__ __forceinline__ void write(Acc a, u64 dst, u32 o, u32) { ((T*)dst)[o] = st<T>(a); }
};

template <typename V> struct ValIdx {
    V v;
    u32 i;
};

template <typename T> struct ExtR {
    typedef typename Compute<T>::type V;
    typedef ValIdx<V> Acc;
    static __device__ __forceinline__ Acc init() {
        Acc a;
        a.v = (V)0;
        a.i = NONE_IDX;
        return a;
    }
    static __device__ __forceinline__ Acc load(T x, u32 i) {
        Acc a;
        a.v = ld<T>(x);
        a.i = i;
        return a;
    }
    // The preferred of two candidates (each the preferred of its own range).
    static __device__ __forceinline__ Acc combine(Acc a, Acc b, u32 mode) {
        if (a.i == NONE_IDX) return b;
        if (b.i == NONE_IDX) return a;
        const bool an = nan_of<V>(a.v), bn = nan_of<V>(b.v);
        if (an || bn) {
            if (an && bn) return a.i <= b.i ? a : b;
            return an ? a : b;
        }
        const bool is_max = (mode & RM_MAX) != 0;
        if (is_max ? a.v > b.v : a.v < b.v) return a;
        if (is_max ? b.v > a.v : b.v < a.v) return b;
        return a.i <= b.i ? a : b;
    }
    static __device__ __forceinline__ void write(Acc a, u64 dst, u32 o, u32 mode) {
        if (mode & RM_ARG) ((i64*)dst)[o] = a.i == NONE_IDX ? (i64)0 : (i64)a.i;
        else ((T*)dst)[o] = st<T>(a.v);
    }
};

// Elements of the input through the kept / reduced views.
template <typename T, typename R> struct StridedSrc {
    const T* p;
    const Strided& ks;
    const Strided& rs;
    __device__ __forceinline__ u64 base(u32 o) const { return at(ks, o); }
    __device__ __forceinline__ typename R::Acc get(u64 b, u32 r) const { return R::load(p[b + at(rs, r)], r); }
};

// Accumulators of pass 1: `nsplit` per output, in split order.
template <typename R> struct PartSrc {
    const typename R::Acc* p;
    u32 nsplit;
    __device__ __forceinline__ u64 base(u32 o) const { return (u64)o * nsplit; }
    __device__ __forceinline__ typename R::Acc get(u64 b, u32 r) const { return p[b + r]; }
};

// Warp shuffles of the accumulators (lane l gets lane l + d).
__device__ __forceinline__ u8 shfl_dn(u8 v, u32 d) { return (u8)__shfl_down_sync(0xffffffffu, (u32)v, d); }
__device__ __forceinline__ u32 shfl_dn(u32 v, u32 d) { return __shfl_down_sync(0xffffffffu, v, d); }
__device__ __forceinline__ i64 shfl_dn(i64 v, u32 d) { return __shfl_down_sync(0xffffffffu, v, d); }
__device__ __forceinline__ float shfl_dn(float v, u32 d) { return __shfl_down_sync(0xffffffffu, v, d); }
__device__ __forceinline__ double shfl_dn(double v, u32 d) { return __shfl_down_sync(0xffffffffu, v, d); }
template <typename V> __device__ __forceinline__ ValIdx<V> shfl_dn(ValIdx<V> a, u32 d) {
    a.v = shfl_dn(a.v, d);
    a.i = __shfl_down_sync(0xffffffffu, a.i, d);
    return a;
}

// Fold aligned groups of `w` lanes (a power of two ≤ 32) of a warp into the group's first
// lane, each lane combined with later lanes on its right (every lane of the warp must call).
template <typename R>
__device__ __forceinline__ typename R::Acc warp_fold(typename R::Acc a, u32 w, u32 mode) {
    for (u32 s = w >> 1; s > 0; s >>= 1) a = R::combine(a, shfl_dn(a, s), mode);
    return a;
}

template <typename R, typename Src>
__device__ __forceinline__ void reduce_tiles(u32 out_n, u32 red_n, u32 chunk, const Src& src, u64 dst, u32 mode) {
    typedef typename R::Acc Acc;
    // One slot per warp, for rows wider than a warp.
    __shared__ Acc sm[RED_THREADS / 32];
    const u32 x = threadIdx.x, y = threadIdx.y, rx = blockDim.x, oy = blockDim.y;
    const u32 t = y * rx + x, lane = t & 31u, warp = t >> 5;
    const u64 r0 = (u64)blockIdx.y * chunk;
    const u64 r1 = min((u64)red_n, r0 + chunk);
    const u64 step = rx;
    // Each thread folds runs of 1024 of its elements separately, then adds the runs (keeps
    // long float sums from drifting as one running sum would).
    const u64 run = step * 1024;
    for (u64 tile = blockIdx.x; tile * oy < out_n; tile += gridDim.x) {
        const u64 o64 = tile * oy + y;
        const bool valid = o64 < out_n;
        Acc acc = R::init();
        if (valid) {
            const u64 b = src.base((u32)o64);
            for (u64 rb = r0 + x; rb < r1; rb += run) {
                const u64 re = min(r1, rb + run);
                Acc part = R::init();
                for (u64 r = rb; r < re; r += step) part = R::combine(part, src.get(b, (u32)r), mode);
                acc = R::combine(acc, part, mode);
            }
        }
        // The row's lanes into its first lane: within the warp when the row fits in one,
        // else each warp's fold through shared memory, folded again by warp 0.
        u32 row = y;
        bool writer;
        if (rx <= 32) {
            acc = warp_fold<R>(acc, rx, mode);
            writer = x == 0;
        } else {
            acc = warp_fold<R>(acc, 32, mode);
            if (lane == 0) sm[warp] = acc;
            __syncthreads();
            const u32 w = rx >> 5;  // warps per row (2, 4 or 8); oy * w == 8
            if (warp == 0) {
                acc = lane < RED_THREADS / 32 ? sm[lane] : R::init();
                acc = warp_fold<R>(acc, w, mode);
            }
            row = lane / w;
            writer = warp == 0 && lane < RED_THREADS / 32 && lane % w == 0;
            __syncthreads();
        }
        const u64 ro = tile * oy + row;
        if (writer && ro < out_n) {
            if (mode & RM_PARTIAL) ((Acc*)dst)[ro * gridDim.y + blockIdx.y] = acc;
            else R::write(acc, dst, (u32)ro, mode);
        }
    }
}

#define RED_K(KIND, R, T) \
    extern "C" __global__ void __launch_bounds__(RED_THREADS) red_##KIND##_##T(u32 out_n, u32 red_n, u32 chunk, const T* src, const __grid_constant__ Strided ks, const __grid_constant__ Strided rs, u64 dst, u32 mode) { \
        StridedSrc<T, R<T> > s{src, ks, rs}; \
        reduce_tiles<R<T> >(out_n, red_n, chunk, s, dst, mode); \
    } \
    extern "C" __global__ void __launch_bounds__(RED_THREADS) red_##KIND##_part_##T(u32 out_n, u32 nsplit, u64 part, u64 dst, u32 mode) { \
        PartSrc<R<T> > s{(const R<T>::Acc*)part, nsplit}; \
        reduce_tiles<R<T> >(out_n, nsplit, nsplit, s, dst, mode & ~RM_PARTIAL); \
    }
#define RED_ALL(T) RED_K(sum, SumR, T) RED_K(ext, ExtR, T)
FOR_ALL(RED_ALL)

// ---- cumsum --------------------------------------------------------------------------------
// The input is `lines` lines of `n` elements: line L starts at at(ls, L) (ls: the view without
// the scanned dim) and steps by `sd`. The output is contiguous in the input's shape: with
// `inner` the product of the dims after the scanned one, element j of line L goes to
// (L / inner) * n * inner + j * inner + L % inner.
// Sums accumulate as the CPU's (f32 for f16/bf16/f32, f64, integers wrapping).

__device__ __forceinline__ u64 line_out(u32 L, u32 n, u32 inner) {
    const u32 oi = L / inner;
    return (u64)oi * n * inner + (L - oi * inner);
}

// One thread per line, sequential (the CPU's summation order exactly); loads issued eight at
// a time so that a thread keeps several in flight.
template <typename T>
__device__ __forceinline__ void cumsum_lines(u32 lines, u32 n, u32 inner, const T* src, const Strided& ls, u64 sd, T* dst) {
    typedef typename Compute<T>::type A;
    GRID_STRIDE(L, lines) {
        const u64 b = at(ls, L);
        const u64 ob = line_out(L, n, inner);
        A acc = (A)0;
        u64 j = 0;
        for (; j + 8 <= n; j += 8) {
            A v[8];
#pragma unroll
            for (u32 k = 0; k < 8; ++k) v[k] = ld<T>(src[b + (j + k) * sd]);
#pragma unroll
            for (u32 k = 0; k < 8; ++k) {
                acc = acc_add(acc, v[k]);
                dst[ob + (j + k) * inner] = st<T>(acc);
            }
        }
        for (; j < n; ++j) {
            acc = acc_add(acc, ld<T>(src[b + j * sd]));
            dst[ob + j * inner] = st<T>(acc);
        }
    }
}

__device__ __forceinline__ u8 shfl_up(u8 v, u32 d) { return (u8)__shfl_up_sync(0xffffffffu, (u32)v, d); }
__device__ __forceinline__ u32 shfl_up(u32 v, u32 d) { return __shfl_up_sync(0xffffffffu, v, d); }
__device__ __forceinline__ i64 shfl_up(i64 v, u32 d) { return __shfl_up_sync(0xffffffffu, v, d); }
__device__ __forceinline__ float shfl_up(float v, u32 d) { return __shfl_up_sync(0xffffffffu, v, d); }
__device__ __forceinline__ double shfl_up(double v, u32 d) { return __shfl_up_sync(0xffffffffu, v, d); }
__device__ __forceinline__ u8 shfl_at(u8 v, u32 l) { return (u8)__shfl_sync(0xffffffffu, (u32)v, l); }
__device__ __forceinline__ u32 shfl_at(u32 v, u32 l) { return __shfl_sync(0xffffffffu, v, l); }
__device__ __forceinline__ i64 shfl_at(i64 v, u32 l) { return __shfl_sync(0xffffffffu, v, l); }
__device__ __forceinline__ float shfl_at(float v, u32 l) { return __shfl_sync(0xffffffffu, v, l); }
__device__ __forceinline__ double shfl_at(double v, u32 l) { return __shfl_sync(0xffffffffu, v, l); }

#define SCAN_THREADS 1024

// Inclusive scan of one value per lane across a warp.
template <typename A> __device__ __forceinline__ A warp_scan(A v, u32 lane) {
    for (u32 off = 1; off < 32; off <<= 1) {
        const A u = shfl_up(v, off);
        if (lane >= off) v = acc_add(u, v);
    }
    return v;
}

// One warp per line (contiguous lines of moderate length): tiles of 32 scanned across the
// warp, each adding the running total of the tiles before it.
template <typename T>
__device__ __forceinline__ void cumsum_warps(u32 lines, u32 n, u32 inner, const T* src, const Strided& ls, u64 sd, T* dst) {
    typedef typename Compute<T>::type A;
    const u32 lane = threadIdx.x & 31u;
    const u64 nwarps = ((u64)gridDim.x * blockDim.x) >> 5;
    for (u64 L = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; L < lines; L += nwarps) {
        const u64 b = at(ls, (u32)L);
        const u64 ob = line_out((u32)L, n, inner);
        A carry = (A)0;
        for (u64 j0 = 0; j0 < n; j0 += 32) {
            const u64 j = j0 + lane;
            A v = j < n ? ld<T>(src[b + j * sd]) : (A)0;
            v = acc_add(carry, warp_scan<A>(v, lane));
            if (j < n) dst[ob + j * inner] = st<T>(v);
            carry = shfl_at(v, 31);
        }
    }
}

// One block per line (long lines): tiles of blockDim.x elements scanned across the block,
// each tile adding the running total of the tiles before it.
template <typename T>
__device__ __forceinline__ void cumsum_block(u32 lines, u32 n, u32 inner, const T* src, const Strided& ls, u64 sd, T* dst) {
    typedef typename Compute<T>::type A;
    __shared__ A warp_tot[32];
    const u32 tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5, nw = blockDim.x >> 5;
    for (u32 L = blockIdx.x; L < lines; L += gridDim.x) {
        const u64 b = at(ls, L);
        const u64 ob = line_out(L, n, inner);
        A carry = (A)0;
        for (u64 j0 = 0; j0 < n; j0 += blockDim.x) {
            const u64 j = j0 + tid;
            A v = j < n ? ld<T>(src[b + j * sd]) : (A)0;
            v = warp_scan<A>(v, lane);
            if (lane == 31) warp_tot[warp] = v;
            __syncthreads();
            if (warp == 0) {
                A w = lane < nw ? warp_tot[lane] : (A)0;
                w = warp_scan<A>(w, lane);
                if (lane < nw) warp_tot[lane] = w;
            }
            __syncthreads();
            const A before = warp > 0 ? warp_tot[warp - 1] : (A)0;
            const A total = warp_tot[nw - 1];
            v = acc_add(acc_add(carry, before), v);
            if (j < n) dst[ob + j * inner] = st<T>(v);
            carry = acc_add(carry, total);
            __syncthreads();
        }
    }
}

#define CUMSUM_K(T) \
    extern "C" __global__ void cumsum_##T(u32 lines, u32 n, u32 inner, const T* src, const __grid_constant__ Strided ls, u64 sd, T* dst) { \
        cumsum_lines<T>(lines, n, inner, src, ls, sd, dst); \
    } \
    extern "C" __global__ void cumsum_warp_##T(u32 lines, u32 n, u32 inner, const T* src, const __grid_constant__ Strided ls, u64 sd, T* dst) { \
        cumsum_warps<T>(lines, n, inner, src, ls, sd, dst); \
    } \
    extern "C" __global__ void __launch_bounds__(SCAN_THREADS) cumsum_block_##T(u32 lines, u32 n, u32 inner, const T* src, const __grid_constant__ Strided ls, u64 sd, T* dst) { \
        cumsum_block<T>(lines, n, inner, src, ls, sd, dst); \
    }
FOR_ALL(CUMSUM_K)
