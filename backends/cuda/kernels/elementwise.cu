// Elementwise unary and binary ops, comparisons and where.
//
// One kernel per dtype (and op family); the op is a run-time code (the same for every
// thread, so the switch costs no divergence). The codes match src/elementwise.rs.
// Semantics follow the CPU backend (backends/cpu/src/elementwise.rs): f16/bf16 compute in
// f32 and round once; integers compute exactly in their own type and wrap.

// ---- op codes ------------------------------------------------------------------------------
#define U_NEG 0u
#define U_ABS 1u
#define U_SIGN 2u
#define U_EXP 3u
#define U_LOG 4u
#define U_SQRT 5u
#define U_RSQRT 6u
#define U_RECIP 7u
#define U_SQR 8u
#define U_SIN 9u
#define U_COS 10u
#define U_TANH 11u
#define U_SIGMOID 12u
#define U_RELU 13u
#define U_GELU 14u
#define U_GELU_TANH 15u
#define U_ERF 16u
#define U_SILU 17u
#define U_SOFTPLUS 18u
#define U_FLOOR 19u
#define U_CEIL 20u
#define U_ROUND 21u
#define U_AFFINE 22u
#define U_POWF 23u
#define U_ELU 24u
#define U_LEAKY_RELU 25u
#define U_CLAMP 26u
// Integer affine with integral coefficients (exact, wrapping); floats never see it.
#define U_AFFINE_INT 27u

#define B_ADD 0u
#define B_SUB 1u
#define B_MUL 2u
#define B_DIV 3u
#define B_POW 4u
#define B_MAX 5u
#define B_MIN 6u

#define C_EQ 0u
#define C_NE 1u
#define C_LT 2u
#define C_LE 3u
#define C_GT 4u
#define C_GE 5u

// ---- float math, per compute type (explicit names: no overload guesswork) ------------------
template <typename C> struct M;
template <> struct M<float> {
    static __device__ __forceinline__ float c(double v) { return (float)v; }
    static __device__ __forceinline__ float exp(float x) { return expf(x); }
    static __device__ __forceinline__ float expm1(float x) { return expm1f(x); }
    static __device__ __forceinline__ float log(float x) { return logf(x); }
    static __device__ __forceinline__ float log1p(float x) { return log1pf(x); }
    static __device__ __forceinline__ float sqrt(float x) { return sqrtf(x); }
    static __device__ __forceinline__ float sin(float x) { return sinf(x); }
    static __device__ __forceinline__ float cos(float x) { return cosf(x); }
    static __device__ __forceinline__ float tanh(float x) { return tanhf(x); }
    static __device__ __forceinline__ float erf(float x) { return erff(x); }
    static __device__ __forceinline__ float erfc(float x) { return erfcf(x); }
    static __device__ __forceinline__ float floor(float x) { return floorf(x); }
    static __device__ __forceinline__ float ceil(float x) { return ceilf(x); }
    static __device__ __forceinline__ float rint(float x) { return rintf(x); }
    static __device__ __forceinline__ float pow(float x, float e) { return powf(x, e); }
    static __device__ __forceinline__ float abs(float x) { return fabsf(x); }
    // Separately rounded products and sums (the CPU never fuses them into an FMA).
    static __device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
    static __device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
};
template <> struct M<double> {
    static __device__ __forceinline__ double c(double v) { return v; }
    static __device__ __forceinline__ double exp(double x) { return ::exp(x); }
    static __device__ __forceinline__ double expm1(double x) { return ::expm1(x); }
    static __device__ __forceinline__ double log(double x) { return ::log(x); }
    static __device__ __forceinline__ double log1p(double x) { return ::log1p(x); }
    static __device__ __forceinline__ double sqrt(double x) { return ::sqrt(x); }
    static __device__ __forceinline__ double sin(double x) { return ::sin(x); }
    static __device__ __forceinline__ double cos(double x) { return ::cos(x); }
    static __device__ __forceinline__ double tanh(double x) { return ::tanh(x); }
    static __device__ __forceinline__ double erf(double x) { return ::erf(x); }
    static __device__ __forceinline__ double erfc(double x) { return ::erfc(x); }
    static __device__ __forceinline__ double floor(double x) { return ::floor(x); }
    static __device__ __forceinline__ double ceil(double x) { return ::ceil(x); }
    static __device__ __forceinline__ double rint(double x) { return ::rint(x); }
    static __device__ __forceinline__ double pow(double x, double e) { return ::pow(x, e); }
    static __device__ __forceinline__ double abs(double x) { return ::fabs(x); }
    static __device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
    static __device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
};

// Stable for large |x|: never evaluates exp of a large positive number.
template <typename C> __device__ __forceinline__ C sigmoid_of(C x) {
    if (x >= (C)0) return (C)1 / ((C)1 + M<C>::exp(-x));
    C e = M<C>::exp(x);
    return e / ((C)1 + e);
}

template <typename C> __device__ __forceinline__ C float_unary(u32 op, C x, C p0, C p1) {
    switch (op) {
    case U_NEG: return -x;
    case U_ABS: return M<C>::abs(x);
    // sign(±0) = sign(NaN) = 0, as PyTorch.
    case U_SIGN: return x > (C)0 ? (C)1 : (x < (C)0 ? (C)-1 : (C)0);
    case U_EXP: return M<C>::exp(x);
    case U_LOG: return M<C>::log(x);
    case U_SQRT: return M<C>::sqrt(x);
    case U_RSQRT: return (C)1 / M<C>::sqrt(x);
    case U_RECIP: return (C)1 / x;
    case U_SQR: return M<C>::mul(x, x);
    case U_SIN: return M<C>::sin(x);
    case U_COS: return M<C>::cos(x);
    case U_TANH: return M<C>::tanh(x);
    case U_SIGMOID: return sigmoid_of<C>(x);
    // NaN < 0 is false: NaN propagates.
    case U_RELU: return x < (C)0 ? (C)0 : x;
    // 0.5·x·erfc(−x/√2): the negative tail keeps full relative precision.
    case U_GELU:
        return M<C>::mul(M<C>::mul(M<C>::c(0.5), x),
                         M<C>::erfc(M<C>::mul(-x, M<C>::c(0.70710678118654752440))));
    case U_GELU_TANH: {
        C x3 = M<C>::mul(M<C>::mul(M<C>::mul(M<C>::c(0.044715), x), x), x);
        C inner = M<C>::mul(M<C>::c(0.7978845608028654), M<C>::add(x, x3));
        return M<C>::mul(M<C>::mul(M<C>::c(0.5), x), M<C>::add((C)1, M<C>::tanh(inner)));
    }
    case U_ERF: return M<C>::erf(x);
    case U_SILU: return M<C>::mul(x, sigmoid_of<C>(x));
    case U_SOFTPLUS: return x > (C)20 ? x : M<C>::log1p(M<C>::exp(x));
    case U_FLOOR: return M<C>::floor(x);
    case U_CEIL: return M<C>::ceil(x);
    // Half to even.
    case U_ROUND: return M<C>::rint(x);
    case U_AFFINE: return M<C>::add(M<C>::mul(x, p0), p1);
    case U_POWF: return M<C>::pow(x, p0);
    case U_ELU: return x > (C)0 ? x : M<C>::mul(p0, M<C>::expm1(x));
    case U_LEAKY_RELU: return x > (C)0 ? x : M<C>::mul(p0, x);
    // torch.clamp: NaN stays NaN, min > max gives max.
    case U_CLAMP: {
        C y = x < p0 ? p0 : x;
        return y > p1 ? p1 : y;
    }
    default: return x;
    }
}

// ---- integer math: exact, wrapping -----------------------------------------------------------
__device__ __forceinline__ u8 wadd(u8 a, u8 b) { return (u8)((u32)a + (u32)b); }
__device__ __forceinline__ u32 wadd(u32 a, u32 b) { return a + b; }
__device__ __forceinline__ i64 wadd(i64 a, i64 b) { return (i64)((u64)a + (u64)b); }
__device__ __forceinline__ u8 wsub(u8 a, u8 b) { return (u8)((u32)a - (u32)b); }
__device__ __forceinline__ u32 wsub(u32 a, u32 b) { return a - b; }
__device__ __forceinline__ i64 wsub(i64 a, i64 b) { return (i64)((u64)a - (u64)b); }
__device__ __forceinline__ u8 wmul(u8 a, u8 b) { return (u8)((u32)a * (u32)b); }
__device__ __forceinline__ u32 wmul(u32 a, u32 b) { return a * b; }
__device__ __forceinline__ i64 wmul(i64 a, i64 b) { return (i64)((u64)a * (u64)b); }

template <typename T> struct IntInfo;
template <> struct IntInfo<u8> {
    static const bool is_signed = false;
    static __device__ __forceinline__ u8 from_f64(double v) { return sat_int<u8>(v, 0.0, 255.0); }
};
template <> struct IntInfo<u32> {
    static const bool is_signed = false;
    static __device__ __forceinline__ u32 from_f64(double v) { return sat_int<u32>(v, 0.0, 4294967295.0); }
};
template <> struct IntInfo<i64> {
    static const bool is_signed = true;
    // Rust's `as i64`: truncate, saturate, NaN -> 0.
    static __device__ __forceinline__ i64 from_f64(double v) {
        if (isnan(v)) return 0;
        if (v >= 9223372036854775807.0) return 9223372036854775807LL;
        if (v <= -9223372036854775808.0) return (-9223372036854775807LL - 1);
        return (i64)v;
    }
};

template <typename T> __device__ __forceinline__ bool is_neg(T x) {
    if constexpr (IntInfo<T>::is_signed) return x < (T)0;
    else return false;
}

template <typename T>
__device__ __forceinline__ T int_unary(u32 op, T x, i64 im, i64 ia, double p0, double p1) {
    switch (op) {
    case U_NEG: return wsub((T)0, x);
    case U_ABS: return is_neg(x) ? wsub((T)0, x) : x;
    case U_SIGN: return x > (T)0 ? (T)1 : (is_neg(x) ? wsub((T)0, (T)1) : (T)0);
    case U_SQR: return wmul(x, x);
    case U_RELU: return is_neg(x) ? (T)0 : x;
    // Integral coefficients: exact and wrapping (the i64 -> T casts wrap like Rust's `as`).
    case U_AFFINE_INT: return wadd(wmul(x, (T)im), (T)ia);
    // Fractional coefficients: through f64, then truncated and saturated.
    case U_AFFINE: return IntInfo<T>::from_f64(__dadd_rn(__dmul_rn((double)x, p0), p1));
    case U_CLAMP: {
        double v = (double)x;
        bool below = v < p0;
        double y = below ? ceil(p0) : v;
        if (y > p1) return IntInfo<T>::from_f64(floor(p1));
        if (below) return IntInfo<T>::from_f64(ceil(p0));
        return x;
    }
    default: return x;
    }
}

// Floor division (Python's //); `*zero` set on a zero divisor (the result is then 0).
template <typename T> __device__ __forceinline__ T floor_div(T a, T b, bool* zero) {
    if (b == (T)0) {
        *zero = true;
        return (T)0;
    }
    if constexpr (IntInfo<T>::is_signed) {
        // i64::MIN / -1 wraps to i64::MIN (and the remainder is 0).
        if (b == (T)-1) return wsub((T)0, a);
        T q = a / b;
        T r = a % b;
        if (r != (T)0 && ((a < (T)0) != (b < (T)0))) q = q - (T)1;
        return q;
    } else {
        return a / b;
    }
}

// a^b wrapping (square and multiply); a negative exponent goes through f64 and truncates.
template <typename T> __device__ __forceinline__ T int_pow(T a, T b) {
    if (is_neg(b)) return IntInfo<T>::from_f64(pow((double)a, (double)b));
    u64 e = (u64)b;
    if (e > 4294967295ull) e = 4294967295ull;
    T r = (T)1;
    T base = a;
    while (e) {
        if (e & 1ull) r = wmul(r, base);
        e >>= 1;
        if (e) base = wmul(base, base);
    }
    return r;
}

template <typename T> __device__ __forceinline__ T int_binary(u32 op, T a, T b, bool* zero) {
    switch (op) {
    case B_ADD: return wadd(a, b);
    case B_SUB: return wsub(a, b);
    case B_MUL: return wmul(a, b);
    case B_DIV: return floor_div(a, b, zero);
    case B_POW: return int_pow(a, b);
    case B_MAX: return a > b ? a : b;
    case B_MIN: return a < b ? a : b;
    default: return a;
    }
}

// torch.maximum/minimum: a NaN on either side wins.
template <typename C> __device__ __forceinline__ C float_binary(u32 op, C a, C b) {
    switch (op) {
    case B_ADD: return a + b;
    case B_SUB: return a - b;
    case B_MUL: return a * b;
    case B_DIV: return a / b;
    case B_POW: return M<C>::pow(a, b);
    case B_MAX: return (a > b || isnan(a)) ? a : b;
    case B_MIN: return (a < b || isnan(a)) ? a : b;
    default: return a;
    }
}

// ---- kernels -------------------------------------------------------------------------------
#define UNARY_FLOAT_K(T) \
    extern "C" __global__ void unary_##T(u32 n, u32 op, double p0, double p1, const T* src, const __grid_constant__ Strided s, T* dst) { \
        typedef Compute<T>::type C; \
        const C q0 = M<C>::c(p0), q1 = M<C>::c(p1); \
        GRID_STRIDE(i, n) dst[i] = st<T>(float_unary<C>(op, ld<T>(src[at(s, i)]), q0, q1)); \
    }
FOR_FLOATS(UNARY_FLOAT_K)

// g·f'(x) for the activations whose derivative takes many composite ops (gelu, gelu_tanh,
// silu), computed in the compute type: one pass instead of 6–12 full-size temporaries.
template <typename C> __device__ __forceinline__ C float_unary_grad(u32 op, C x, C g) {
    switch (op) {
    case U_GELU: {
        // Φ(x) + x·φ(x)
        const C cdf = (C)0.5 * M<C>::erfc(-x * (C)0.70710678118654752440);
        const C pdf = M<C>::exp((C)-0.5 * x * x) * (C)0.39894228040143267794;
        return g * (cdf + x * pdf);
    }
    case U_GELU_TANH: {
        const C k = (C)0.7978845608028654, a = (C)0.044715;
        const C x2 = x * x;
        const C t = M<C>::tanh(k * x * ((C)1 + a * x2));
        const C dinner = k * ((C)1 + (C)3 * a * x2);
        return g * ((C)0.5 * ((C)1 + t) + (C)0.5 * x * ((C)1 - t * t) * dinner);
    }
    case U_SILU: {
        const C s = sigmoid_of<C>(x);
        return g * (s * ((C)1 + x * ((C)1 - s)));
    }
    default: return g;
    }
}

#define UNARY_BWD_K(T) \
    extern "C" __global__ void unary_bwd_##T(u32 n, u32 op, const T* x, const __grid_constant__ Strided sx, const T* g, const __grid_constant__ Strided sg, T* dst) { \
        typedef Compute<T>::type C; \
        GRID_STRIDE(i, n) dst[i] = st<T>(float_unary_grad<C>(op, ld<T>(x[at(sx, i)]), ld<T>(g[at(sg, i)]))); \
    }
FOR_FLOATS(UNARY_BWD_K)

#define UNARY_INT_K(T) \
    extern "C" __global__ void unary_##T(u32 n, u32 op, i64 im, i64 ia, double p0, double p1, const T* src, const __grid_constant__ Strided s, T* dst) { \
        GRID_STRIDE(i, n) dst[i] = int_unary<T>(op, src[at(s, i)], im, ia, p0, p1); \
    }
FOR_INTS(UNARY_INT_K)

#define BINARY_FLOAT_K(T) \
    extern "C" __global__ void binary_##T(u32 n, u32 op, const T* a, const __grid_constant__ Strided sa, const T* b, const __grid_constant__ Strided sb, T* dst, u32* err) { \
        typedef Compute<T>::type C; \
        GRID_STRIDE(i, n) dst[i] = st<T>(float_binary<C>(op, ld<T>(a[at(sa, i)]), ld<T>(b[at(sb, i)]))); \
    }
FOR_FLOATS(BINARY_FLOAT_K)

#define BINARY_INT_K(T) \
    extern "C" __global__ void binary_##T(u32 n, u32 op, const T* a, const __grid_constant__ Strided sa, const T* b, const __grid_constant__ Strided sb, T* dst, u32* err) { \
        bool zero = false; \
        GRID_STRIDE(i, n) dst[i] = int_binary<T>(op, a[at(sa, i)], b[at(sb, i)], &zero); \
        if (zero) raise_err(err, ERR_DIV_ZERO); \
    }
FOR_INTS(BINARY_INT_K)

template <typename C> __device__ __forceinline__ u8 compare(u32 op, C a, C b) {
    switch (op) {
    case C_EQ: return a == b;
    case C_NE: return a != b;
    case C_LT: return a < b;
    case C_LE: return a <= b;
    case C_GT: return a > b;
    case C_GE: return a >= b;
    default: return 0;
    }
}

#define CMP_K(T) \
    extern "C" __global__ void cmp_##T(u32 n, u32 op, const T* a, const __grid_constant__ Strided sa, const T* b, const __grid_constant__ Strided sb, u8* dst) { \
        GRID_STRIDE(i, n) dst[i] = compare<Compute<T>::type>(op, ld<T>(a[at(sa, i)]), ld<T>(b[at(sb, i)])); \
    }
FOR_ALL(CMP_K)

// where: a u8 condition (non-zero picks `t`) chooses between two values copied as raw bits
// of width B bytes. (Other condition dtypes become a u8 mask through cmp_*(ne, 0) first.)
#define WHERE_K(B, V) \
    extern "C" __global__ void where_b##B(u32 n, const u8* c, const __grid_constant__ Strided sc, const V* t, const __grid_constant__ Strided st_, const V* f, const __grid_constant__ Strided sf, V* dst) { \
        GRID_STRIDE(i, n) dst[i] = c[at(sc, i)] != 0 ? t[at(st_, i)] : f[at(sf, i)]; \
    }
WHERE_K(1, u8)
WHERE_K(2, u16)
WHERE_K(4, u32)
WHERE_K(8, u64)
