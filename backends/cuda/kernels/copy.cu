// Strided copies, fills and casts between every pair of dtypes.

template <typename T>
__device__ __forceinline__ void copy_impl(u32 n, const T* src, const Strided& s, T* dst, const Strided& d) {
    GRID_STRIDE(i, n) dst[at(d, i)] = src[at(s, i)];
}

#define COPY_K(B, T) \
    extern "C" __global__ void copy_b##B(u32 n, const T* src, const __grid_constant__ Strided s, T* dst, const __grid_constant__ Strided d) { copy_impl<T>(n, src, s, dst, d); } \
    extern "C" __global__ void fill_b##B(u32 n, T* dst, u64 bits) { GRID_STRIDE(i, n) dst[i] = (T)bits; }
COPY_K(1, u8)
COPY_K(2, u16)
COPY_K(4, u32)
COPY_K(8, u64)

template <typename T> struct IsInt { static const bool v = false; };
template <> struct IsInt<u8> { static const bool v = true; };
template <> struct IsInt<u32> { static const bool v = true; };
template <> struct IsInt<i64> { static const bool v = true; };
// Types between which f32 is an exact intermediate.
template <typename T> struct Via32 { static const bool v = false; };
template <> struct Via32<f16> { static const bool v = true; };
template <> struct Via32<bf16> { static const bool v = true; };
template <> struct Via32<f32> { static const bool v = true; };

template <typename B> __device__ __forceinline__ B float_to_int(double v);
template <> __device__ __forceinline__ u8 float_to_int<u8>(double v) { return sat_int<u8>(v, 0.0, 255.0); }
template <> __device__ __forceinline__ u32 float_to_int<u32>(double v) { return sat_int<u32>(v, 0.0, 4294967295.0); }
template <> __device__ __forceinline__ i64 float_to_int<i64>(double v) {
    if (isnan(v)) return 0;
    if (v >= 9223372036854775807.0) return 9223372036854775807LL;
    if (v <= -9223372036854775808.0) return (-9223372036854775807LL - 1);
    return (i64)v;
}

// PyTorch's conversions: int->int wraps, float->int truncates and saturates (NaN -> 0),
// between f16/bf16/f32 through f32, anything else through f64 (one rounding).
template <typename A, typename B> __device__ __forceinline__ B cast_one(A a) {
    if constexpr (IsInt<A>::v && IsInt<B>::v) return (B)(i64)a;
    else if constexpr (IsInt<B>::v) return float_to_int<B>(to_f64(a));
    else if constexpr (Via32<A>::v && Via32<B>::v) return from_f32<B>(to_f32(a));
    else return from_f64<B>(to_f64(a));
}

#define CAST_K(A, B) \
    extern "C" __global__ void cast_##A##_##B(u32 n, const A* src, const __grid_constant__ Strided s, B* dst) { \
        GRID_STRIDE(i, n) dst[i] = cast_one<A, B>(src[at(s, i)]); \
    }
#define CAST_FROM(A) CAST_K(A, u8) CAST_K(A, u32) CAST_K(A, i64) CAST_K(A, f16) CAST_K(A, bf16) CAST_K(A, f32) CAST_K(A, f64)
FOR_ALL(CAST_FROM)
