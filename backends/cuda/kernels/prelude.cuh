// Shared by every kernel module of the CUDA backend (prepended by src/kernels.rs).
// No CUDA headers: NVRTC compiles this alone, the 16-bit floats are plain 16-bit words
// converted with PTX instructions, so the module builds with any NVRTC of the toolkit.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

struct f16 { u16 x; };
struct bf16 { u16 x; };
typedef float f32;
typedef double f64;

#define MAXD 8

// A strided view: `rank == 0` means contiguous from `offset`. Dims and strides are
// innermost-last, in elements. Filled by `Strided::new` in src/kernels.rs.
struct Strided {
    u32 dims[MAXD];
    u64 strides[MAXD];
    u64 offset;
    u32 rank;
};

// The storage offset of the i-th element (row-major over the view's dims).
__device__ __forceinline__ u64 at(const Strided& s, u32 i) {
    if (s.rank == 0) return s.offset + i;
    // Ranks 1 and 2 (contiguous views, and a row broadcast over rows) take no division or
    // one: the general loop's divisions per element made elementwise kernels bound by integer
    // arithmetic rather than memory (~0.5 TB/s).
    if (s.rank == 1) return s.offset + (u64)i * s.strides[0];
    if (s.rank == 2) {
        const u32 q = i / s.dims[1];
        return s.offset + (u64)q * s.strides[0] + (u64)(i - q * s.dims[1]) * s.strides[1];
    }
    u64 off = s.offset;
    // Not unrolled: unrolled over MAXD it costs ~22 KB of code per kernel and seconds of NVRTC.
#pragma unroll 1
    for (int d = (int)s.rank - 1; d >= 0; --d) {
        u32 dim = s.dims[d];
        u32 q = i / dim;
        off += (u64)(i - q * dim) * s.strides[d];
        i = q;
    }
    return off;
}

#define GRID_STRIDE(i, n) for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

// ---- 16-bit floats -------------------------------------------------------------------------
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float b2f(u16 b) { return __uint_as_float(((u32)b) << 16); }
__device__ __forceinline__ u16 f2b(float f) {
    u16 b;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f));
    return b;
}
// f64 -> f32 rounded to odd: a later round-to-nearest to 16 bits then equals the direct
// rounding of the f64 (f32 keeps more than two extra bits).
__device__ __forceinline__ float d2f_odd(double d) {
    float f = __double2float_rz(d);
    if ((double)f != d && !isnan(d)) f = __uint_as_float(__float_as_uint(f) | 1u);
    return f;
}

// ---- per-dtype loads and stores in the compute type ---------------------------------------
// Floats compute in f32 (f16, bf16, f32) or f64; integers in their own type.
template <typename T> struct Compute { typedef T type; };
template <> struct Compute<f16> { typedef float type; };
template <> struct Compute<bf16> { typedef float type; };

template <typename T> __device__ __forceinline__ typename Compute<T>::type ld(T v) { return v; }
template <> __device__ __forceinline__ float ld<f16>(f16 v) { return h2f(v.x); }
template <> __device__ __forceinline__ float ld<bf16>(bf16 v) { return b2f(v.x); }

template <typename T> __device__ __forceinline__ T st(typename Compute<T>::type v) { return v; }
template <> __device__ __forceinline__ f16 st<f16>(float v) { f16 r; r.x = f2h(v); return r; }
template <> __device__ __forceinline__ bf16 st<bf16>(float v) { bf16 r; r.x = f2b(v); return r; }

// Any dtype to f32 / f64 and back (f64 rounds to 16 bits directly, through round-to-odd).
template <typename T> __device__ __forceinline__ float to_f32(T v) { return (float)v; }
template <> __device__ __forceinline__ float to_f32<f16>(f16 v) { return h2f(v.x); }
template <> __device__ __forceinline__ float to_f32<bf16>(bf16 v) { return b2f(v.x); }
template <typename T> __device__ __forceinline__ double to_f64(T v) { return (double)v; }
template <> __device__ __forceinline__ double to_f64<f16>(f16 v) { return (double)h2f(v.x); }
template <> __device__ __forceinline__ double to_f64<bf16>(bf16 v) { return (double)b2f(v.x); }

template <typename T> __device__ __forceinline__ T from_f32(float v) { return (T)v; }
template <> __device__ __forceinline__ f16 from_f32<f16>(float v) { f16 r; r.x = f2h(v); return r; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float v) { bf16 r; r.x = f2b(v); return r; }
template <typename T> __device__ __forceinline__ T from_f64(double v) { return (T)v; }
template <> __device__ __forceinline__ f16 from_f64<f16>(double v) { f16 r; r.x = f2h(d2f_odd(v)); return r; }
template <> __device__ __forceinline__ bf16 from_f64<bf16>(double v) { bf16 r; r.x = f2b(d2f_odd(v)); return r; }

// Float to integer as PyTorch's CPU path does: truncate toward zero, saturate, NaN -> 0.
template <typename I> __device__ __forceinline__ I sat_int(double v, double lo, double hi) {
    if (isnan(v)) return (I)0;
    v = trunc(v);
    if (v <= lo) return (I)lo;
    if (v >= hi) return (I)hi;
    return (I)v;
}

// The dtype names used in kernel names, matching DType::as_str on the Rust side.
#define FOR_FLOATS(M) M(f16) M(bf16) M(f32) M(f64)
#define FOR_INTS(M) M(u8) M(u32) M(i64)
#define FOR_ALL(M) FOR_INTS(M) FOR_FLOATS(M)

// Device-side error flag (one u32 per device): kernels that find a bad index or an integer
// division by zero store a code here; the host reads it after the op and returns an Err.
#define ERR_INDEX 1u
#define ERR_DIV_ZERO 2u
__device__ __forceinline__ void raise_err(u32* err, u32 code) { atomicOr(err, code); }
