// Counter-based random numbers: element i of a draw with seed s is a function of (s, i) alone
// (Philox4x32-10 with key = s and counter = (i, attempt, 0, 0)), so the result does not depend
// on the launch configuration, and a shorter draw is a prefix of a longer one.

struct Philox4 { u32 v[4]; };

// Philox4x32 with 10 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
__device__ __forceinline__ Philox4 philox4x32_10(u32 c0, u32 c1, u32 c2, u32 c3, u64 key) {
    u32 k0 = (u32)key, k1 = (u32)(key >> 32);
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        u64 p0 = (u64)0xD2511F53u * c0;
        u64 p1 = (u64)0xCD9E8D57u * c2;
        u32 n0 = (u32)(p1 >> 32) ^ c1 ^ k0;
        u32 n2 = (u32)(p0 >> 32) ^ c3 ^ k1;
        c1 = (u32)p1;
        c3 = (u32)p0;
        c0 = n0;
        c2 = n2;
    }
    Philox4 out;
    out.v[0] = c0; out.v[1] = c1; out.v[2] = c2; out.v[3] = c3;
    return out;
}

// 53 random bits of two words as a double in [0, 1).
__device__ __forceinline__ double unit53(u32 hi, u32 lo) {
    u64 bits = (((u64)hi << 32) | lo) >> 11;
    return (double)bits * (1.0 / 9007199254740992.0);
}

// Uniform in [lo, hi) stored in T: lo + (hi − lo)·u in f64 (one fma), rounded once to T; a
// value that rounds to `hi` is drawn again from the next counter (as the CPU backend does),
// and after 16 tries the element is `lo`.
template <typename T>
__device__ __forceinline__ void uniform_impl(u32 n, u64 seed, double lo, double hi, T* out) {
    double span = hi - lo;
    GRID_STRIDE(i, n) {
        T r = from_f64<T>(lo);
        for (u32 attempt = 0; attempt < 16; ++attempt) {
            Philox4 p = philox4x32_10(i, attempt, 0, 0, seed);
            T v = from_f64<T>(__fma_rn(span, unit53(p.v[0], p.v[1]), lo));
            if (to_f64<T>(v) < hi) {
                r = v;
                break;
            }
        }
        out[i] = r;
    }
}

// Normal(mean, std) by Box–Muller in f64 (the cosine branch), rounded once to T.
template <typename T>
__device__ __forceinline__ void normal_impl(u32 n, u64 seed, double mean, double std, T* out) {
    GRID_STRIDE(i, n) {
        Philox4 p = philox4x32_10(i, 0, 0, 0, seed);
        double u1 = unit53(p.v[0], p.v[1]) + (1.0 / 9007199254740992.0);  // (0, 1]
        double u2 = unit53(p.v[2], p.v[3]);                                // [0, 1)
        double z = sqrt(-2.0 * log(u1)) * cospi(2.0 * u2);
        out[i] = from_f64<T>(__fma_rn(std, z, mean));
    }
}

#define RANDOM_K(T) \
    extern "C" __global__ void rand_uniform_##T(u32 n, u64 seed, f64 lo, f64 hi, T* out) { \
        uniform_impl<T>(n, seed, lo, hi, out); \
    } \
    extern "C" __global__ void rand_normal_##T(u32 n, u64 seed, f64 mean, f64 std, T* out) { \
        normal_impl<T>(n, seed, mean, std, out); \
    }
FOR_FLOATS(RANDOM_K)
