// Indexing (gather, scatter-add) and unfold/fold (im2col, col2im).
//
// index_select and index_add are gather and scatter-add with the 1-D ids broadcast over the
// other dims (the host builds that view), so two kernels per dtype serve all four ops.
// Bad ids (negative, or >= the size along `dim`) raise ERR_INDEX and are skipped.

// An index of any index dtype as i64 (u8 and u32 are never negative).
template <typename I> __device__ __forceinline__ i64 id_i64(I v) { return (i64)v; }

// out[i] = src[base(i) + ids[i] * sd], where `sv` is the source seen with the output's shape
// and a zero stride along `dim`, `iv` the ids' view (same shape).
template <typename T, typename I>
__device__ __forceinline__ void gather_impl(u32 n, const T* src, const Strided& sv, u64 sd, u64 size,
                                            const I* ids, const Strided& iv, T* out, u32* err) {
    GRID_STRIDE(i, n) {
        i64 id = id_i64<I>(ids[at(iv, i)]);
        if (id < 0 || (u64)id >= size) {
            raise_err(err, ERR_INDEX);
            continue;
        }
        out[i] = src[at(sv, i) + (u64)id * sd];
    }
}

// Dtype-agnostic: by element width.
#define GATHER_K(B, T, I) \
    extern "C" __global__ void gather_b##B##_##I(u32 n, const T* src, const __grid_constant__ Strided sv, u64 sd, u64 size, \
                                                 const I* ids, const __grid_constant__ Strided iv, T* out, u32* err) { \
        gather_impl<T, I>(n, src, sv, sd, size, ids, iv, out, err); \
    }
#define GATHER_IDS(B, T) GATHER_K(B, T, u8) GATHER_K(B, T, u32) GATHER_K(B, T, i64)
GATHER_IDS(1, u8)
GATHER_IDS(2, u16)
GATHER_IDS(4, u32)
GATHER_IDS(8, u64)

// ---- atomic adds ---------------------------------------------------------------------------
// Integers wrap; f16/bf16 add in f32 and round once per add (as the CPU backend does), by a
// compare-and-swap loop on the aligned 32-bit word holding the element.

__device__ __forceinline__ void atomic_add(f32* p, f32 v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(f64* p, f64 v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(u32* p, u32 v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(i64* p, i64 v) {
    atomicAdd((unsigned long long*)p, (unsigned long long)v);
}
__device__ __forceinline__ void atomic_add(u8* p, u8 v) {
    u64 addr = (u64)p;
    u32* word = (u32*)(addr & ~(u64)3);
    u32 shift = (u32)(addr & 3) * 8;
    u32 old = *word, assumed;
    do {
        assumed = old;
        u32 b = ((assumed >> shift) + (u32)v) & 0xffu;
        u32 next = (assumed & ~(0xffu << shift)) | (b << shift);
        old = atomicCAS(word, assumed, next);
    } while (old != assumed);
}
template <bool BF>
__device__ __forceinline__ void atomic_add_half(u16* p, float v) {
    u64 addr = (u64)p;
    u32* word = (u32*)(addr & ~(u64)3);
    u32 shift = (u32)(addr & 2) * 8;
    u32 old = *word, assumed;
    do {
        assumed = old;
        u16 h = (u16)((assumed >> shift) & 0xffffu);
        float s = (BF ? b2f(h) : h2f(h)) + v;
        u32 r = (u32)(BF ? f2b(s) : f2h(s));
        u32 next = (assumed & ~(0xffffu << shift)) | (r << shift);
        old = atomicCAS(word, assumed, next);
    } while (old != assumed);
}
__device__ __forceinline__ void atomic_add(f16* p, f16 v) { atomic_add_half<false>(&p->x, h2f(v.x)); }
__device__ __forceinline__ void atomic_add(bf16* p, bf16 v) { atomic_add_half<true>(&p->x, b2f(v.x)); }

// out[base(i) + ids[i] * od] += src[i] over the ids' shape, where `ov` is the (contiguous)
// output seen with the ids' shape and a zero stride along `dim`.
template <typename T, typename I>
__device__ __forceinline__ void scatter_add_impl(u32 n, T* out, const Strided& ov, u64 od, u64 size,
                                                 const I* ids, const Strided& iv, const T* src,
                                                 const Strided& sv, u32* err) {
    GRID_STRIDE(i, n) {
        i64 id = id_i64<I>(ids[at(iv, i)]);
        if (id < 0 || (u64)id >= size) {
            raise_err(err, ERR_INDEX);
            continue;
        }
        atomic_add(out + at(ov, i) + (u64)id * od, src[at(sv, i)]);
    }
}

#define SCATTER_K(T, I) \
    extern "C" __global__ void scatter_add_##T##_##I(u32 n, T* out, const __grid_constant__ Strided ov, u64 od, u64 size, \
                                                     const I* ids, const __grid_constant__ Strided iv, const T* src, \
                                                     const __grid_constant__ Strided sv, u32* err) { \
        scatter_add_impl<T, I>(n, out, ov, od, size, ids, iv, src, sv, err); \
    }
#define SCATTER_IDS(T) SCATTER_K(T, u8) SCATTER_K(T, u32) SCATTER_K(T, i64)
FOR_ALL(SCATTER_IDS)

// ---- unfold / fold -------------------------------------------------------------------------
// Geometry normalised to three spatial dims (leading ones of size 1), as in src/index.rs
// (`struct Geom` there, same field order).
struct Geom {
    u64 s_n, s_c, s_sp[3];  // strides of the strided operand: N, C, spatial (unfold input)
    u64 offset;
    u32 input[3], out[3], kernel[3], stride[3], padding[3], dilation[3];
    u32 channels;           // C of the [N, C, *spatial] side
    u32 klen;               // prod(kernel)
    u32 olen;               // prod(out)
    u32 pad_;
};

// Bits of a value of type T (the low sizeof(T) bytes, little-endian).
template <typename T> __device__ __forceinline__ T from_bits(u64 bits) {
    union { u64 b; T v; } u;
    u.b = bits;
    return u.v;
}

// Unfold: out [N, C·K, L] contiguous; one thread per output element.
template <typename T>
__device__ __forceinline__ void unfold_impl(u32 n, const T* x, Geom g, u64 pad_bits, T* out) {
    T pad = from_bits<T>(pad_bits);
    GRID_STRIDE(i, n) {
        u32 pos = i % g.olen;
        u32 r = i / g.olen;
        u32 kk = r % g.klen;
        u32 plane = r / g.klen;
        u32 ci = plane % g.channels, ni = plane / g.channels;
        // Output position (z, y, x) and kernel tap (a, b, e).
        u32 o[3], k[3];
        o[2] = pos % g.out[2]; pos /= g.out[2];
        o[1] = pos % g.out[1]; o[0] = pos / g.out[1];
        k[2] = kk % g.kernel[2]; kk /= g.kernel[2];
        k[1] = kk % g.kernel[1]; k[0] = kk / g.kernel[1];
        u64 off = g.offset + (u64)ni * g.s_n + (u64)ci * g.s_c;
        bool inside = true;
#pragma unroll
        for (int d = 0; d < 3; ++d) {
            i64 c = (i64)o[d] * g.stride[d] + (i64)k[d] * g.dilation[d] - (i64)g.padding[d];
            if (c < 0 || c >= (i64)g.input[d]) inside = false;
            else off += (u64)c * g.s_sp[d];
        }
        out[i] = inside ? x[off] : pad;
    }
}

// Sums in the accumulator type: f32 for the 16-bit floats, unsigned for integers (wrapping).
template <typename T> struct FoldAcc { typedef typename Compute<T>::type type; };
template <> struct FoldAcc<u8> { typedef u32 type; };
template <> struct FoldAcc<i64> { typedef u64 type; };
template <typename T> __device__ __forceinline__ typename FoldAcc<T>::type fold_ld(T v) {
    return (typename FoldAcc<T>::type)ld<T>(v);
}
template <typename T> __device__ __forceinline__ T fold_st(typename FoldAcc<T>::type a) {
    return st<T>((typename Compute<T>::type)a);
}

// Fold as a gather: out [N, C, *spatial] contiguous; each output element sums, in kernel-tap
// order, the column entries whose tap lands on it. `g.input` is the output's spatial size
// here, `g.out` the number of positions; the strides are those of the [N, C·K, L] columns
// (s_n, s_c = the C·K stride, s_sp[0] = the L stride).
template <typename T>
__device__ __forceinline__ void fold_impl(u32 n, const T* cols, Geom g, T* out) {
    GRID_STRIDE(i, n) {
        u32 p[3];
        u32 rem = i;
        p[2] = rem % g.input[2]; rem /= g.input[2];
        p[1] = rem % g.input[1]; rem /= g.input[1];
        p[0] = rem % g.input[0]; rem /= g.input[0];
        u32 ci = rem % g.channels, ni = rem / g.channels;
        u64 base = g.offset + (u64)ni * g.s_n + (u64)ci * g.klen * g.s_c;
        typename FoldAcc<T>::type acc = 0;
        for (u32 a = 0; a < g.kernel[0]; ++a) {
            // o·stride = p + padding − a·dilation must be a multiple of stride in [0, out).
            i64 t0 = (i64)p[0] + g.padding[0] - (i64)a * g.dilation[0];
            if (t0 < 0 || t0 % g.stride[0] != 0) continue;
            i64 o0 = t0 / g.stride[0];
            if (o0 >= g.out[0]) continue;
            for (u32 b = 0; b < g.kernel[1]; ++b) {
                i64 t1 = (i64)p[1] + g.padding[1] - (i64)b * g.dilation[1];
                if (t1 < 0 || t1 % g.stride[1] != 0) continue;
                i64 o1 = t1 / g.stride[1];
                if (o1 >= g.out[1]) continue;
                for (u32 e = 0; e < g.kernel[2]; ++e) {
                    i64 t2 = (i64)p[2] + g.padding[2] - (i64)e * g.dilation[2];
                    if (t2 < 0 || t2 % g.stride[2] != 0) continue;
                    i64 o2 = t2 / g.stride[2];
                    if (o2 >= g.out[2]) continue;
                    u64 kk = ((u64)a * g.kernel[1] + b) * g.kernel[2] + e;
                    u64 pos = ((u64)o0 * g.out[1] + (u64)o1) * g.out[2] + (u64)o2;
                    acc += fold_ld<T>(cols[base + kk * g.s_c + pos * g.s_sp[0]]);
                }
            }
        }
        out[i] = fold_st<T>(acc);
    }
}

#define UNFOLD_K(T) \
    extern "C" __global__ void unfold_##T(u32 n, const T* x, Geom g, u64 pad_bits, T* out) { \
        unfold_impl<T>(n, x, g, pad_bits, out); \
    } \
    extern "C" __global__ void fold_##T(u32 n, const T* cols, Geom g, T* out) { \
        fold_impl<T>(n, cols, g, out); \
    }
FOR_ALL(UNFOLD_K)
