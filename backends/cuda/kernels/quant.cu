// Quantized matrix products on ggml blocks (src/quant.rs): `out[m, n] = x[m, :] · w[n, :]`
// with `w` row-major blocks exactly as GGUF stores them and `x` contiguous f32.
//
// Every block type splits a block into UNITS units of work. Decoding unit `u` yields NG groups
// of 8 values; group `g` holds the block's elements `off(u, g) .. off(u, g) + 8` (a multiple of
// 8, so the matching activations are two aligned float4 loads and the matching bf16 outputs one
// 16-byte store). The values are computed with the same f32 operations as the host reference
// (tensor-core/src/quant/dequant.rs).
//
// - qmv_<type>_m<M>: few activation rows (decode). The activations are staged in shared
//   memory; each warp takes a few weight rows, its lanes walk the rows' units (consecutive
//   lanes read consecutive bytes), dequantize in registers and accumulate the M dot products
//   of each row, then reduce across the warp.
// - qdq_<type>_bf16: dequantize whole blocks to bf16 for the cuBLAS product of many rows.
// - qsplit_bf16: f32 activations as two bf16 planes, x ≈ hi + lo.

// A little-endian u32 from a 2-byte aligned address (ggml blocks of 18, 34 and 210 bytes only
// keep 2-byte alignment).
__device__ __forceinline__ u32 ld_u32_a2(const u8* p) {
    const u16* q = (const u16*)p;
    return (u32)q[0] | ((u32)q[1] << 16);
}
__device__ __forceinline__ float ld_f16(const u8* p) { return h2f(*(const u16*)p); }
// Byte i (0..3) of a word.
__device__ __forceinline__ u32 byte_of(u32 w, u32 i) { return (w >> (8 * i)) & 0xFFu; }

// ---- block types -----------------------------------------------------------------------------
//
// Each type has `Raw load(block, u)`, which reads unit u's bytes (all the loads, issued
// together), and `group(raw, u, g, v)`, which turns them into group g's 8 values.

// Q4_0: f16 d, 16 bytes of nibbles; byte j holds element j (low) and j + 16 (high).
// Unit u: bytes 8u..8u+8 -> elements 8u.. (low nibbles) and 16 + 8u.. (high nibbles).
struct BQ4_0 {
    static const u32 QK = 32, BYTES = 18, UNITS = 2, NG = 2;
    struct Raw { float d; u32 q[2]; };
    static __device__ __forceinline__ u32 off(u32 u, u32 g) { return 16 * g + 8 * u; }
    static __device__ __forceinline__ Raw load(const u8* b, u32 u) {
        const u8* qs = b + 2 + 8 * u;
        return Raw{ld_f16(b), {ld_u32_a2(qs), ld_u32_a2(qs + 4)}};
    }
    static __device__ __forceinline__ void group(const Raw& r, u32 u, u32 g, float v[8]) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const u32 byte = byte_of(r.q[i / 4], i % 4);
            v[i] = r.d * (float)((int)((byte >> (4 * g)) & 0xF) - 8);
        }
    }
};

// Q4_1: f16 d, f16 m, 16 bytes of nibbles laid out as in Q4_0; value d * q + m.
struct BQ4_1 {
    static const u32 QK = 32, BYTES = 20, UNITS = 2, NG = 2;
    struct Raw { float d, m; u32 q[2]; };
    static __device__ __forceinline__ u32 off(u32 u, u32 g) { return 16 * g + 8 * u; }
    static __device__ __forceinline__ Raw load(const u8* b, u32 u) {
        // 20-byte blocks keep 4-byte alignment.
        const u32* qs = (const u32*)(b + 4 + 8 * u);
        return Raw{ld_f16(b), ld_f16(b + 2), {qs[0], qs[1]}};
    }
    static __device__ __forceinline__ void group(const Raw& r, u32 u, u32 g, float v[8]) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const u32 byte = byte_of(r.q[i / 4], i % 4);
            v[i] = r.d * (float)((byte >> (4 * g)) & 0xF) + r.m;
        }
    }
};

// Q8_0: f16 d, 32 signed bytes. Unit u: elements 16u..16u+16.
struct BQ8_0 {
    static const u32 QK = 32, BYTES = 34, UNITS = 2, NG = 2;
    struct Raw { float d; u32 q[4]; };
    static __device__ __forceinline__ u32 off(u32 u, u32 g) { return 16 * u + 8 * g; }
    static __device__ __forceinline__ Raw load(const u8* b, u32 u) {
        const u8* qs = b + 2 + 16 * u;
        return Raw{ld_f16(b), {ld_u32_a2(qs), ld_u32_a2(qs + 4), ld_u32_a2(qs + 8), ld_u32_a2(qs + 12)}};
    }
    static __device__ __forceinline__ void group(const Raw& r, u32 u, u32 g, float v[8]) {
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = (float)(signed char)byte_of(r.q[2 * g + i / 4], i % 4) * r.d;
    }
};

// The 6-bit (scale, min) of sub-block j (0..8) of Q4_K/Q5_K, packed in 12 bytes.
__device__ __forceinline__ void scale_min_k4(const u8* s, u32 j, u32& sc, u32& mn) {
    if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Q4_K: f16 d, f16 dmin, 12 bytes of scales, 128 bytes of nibbles. Sub-blocks 2c and 2c + 1
// (32 elements each) share qs[32c..32c+32], low then high nibbles. Unit u = (c = u / 2,
// h = u % 2): bytes qs[32c + 16h..+16] -> elements 64c + 16h.. (low) and 64c + 32 + 16h..
// (high). 144-byte blocks keep 16-byte alignment: the unit is one 16-byte load.
struct BQ4_K {
    static const u32 QK = 256, BYTES = 144, UNITS = 8, NG = 4;
    struct Raw { float dl[2], ml[2]; u32 q[4]; };
    static __device__ __forceinline__ u32 off(u32 u, u32 g) {
        return 64 * (u / 2) + 32 * (g / 2) + 16 * (u % 2) + 8 * (g % 2);
    }
    static __device__ __forceinline__ Raw load(const u8* b, u32 u) {
        const u32 c = u / 2, h = u % 2;
        const uint4 q4 = *(const uint4*)(b + 16 + 32 * c + 16 * h);
        const float d = ld_f16(b), dmin = ld_f16(b + 2);
        Raw r;
        r.q[0] = q4.x; r.q[1] = q4.y; r.q[2] = q4.z; r.q[3] = q4.w;
#pragma unroll
        for (int hi = 0; hi < 2; ++hi) {
            u32 sc, mn;
            scale_min_k4(b + 4, 2 * c + hi, sc, mn);
            r.dl[hi] = d * (float)sc;
            r.ml[hi] = dmin * (float)mn;
        }
        return r;
    }
    // Group g: nibble half g / 2 (sub-block 2c + g / 2) of bytes 8(g % 2)..+8.
    static __device__ __forceinline__ void group(const Raw& r, u32 u, u32 g, float v[8]) {
        const u32 hi = g / 2;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const u32 nib = (byte_of(r.q[2 * (g % 2) + i / 4], i % 4) >> (4 * hi)) & 0xF;
            v[i] = r.dl[hi] * (float)nib - r.ml[hi];
        }
    }
};

// Q6_K: 128 bytes ql (low nibbles), 64 bytes qh (2-bit highs), 16 signed scales, f16 d.
// Element e = 128h + 32s + l (h < 2, s < 4, l < 32): low nibble of ql[64h + 32(s % 2) + l]
// shifted by 4(s / 2), high bits (qh[32h + l] >> 2s) & 3, scale scales[e / 16].
// Unit u = (h = u / 4, l0 = 8(u % 4)): groups s = 0..3 at elements 128h + 32s + l0..+8.
struct BQ6_K {
    static const u32 QK = 256, BYTES = 210, UNITS = 8, NG = 4;
    struct Raw { float dl[4]; u32 qa[2], qb[2], qh[2]; };
    static __device__ __forceinline__ u32 off(u32 u, u32 g) { return 128 * (u / 4) + 32 * g + 8 * (u % 4); }
    static __device__ __forceinline__ Raw load(const u8* b, u32 u) {
        const u32 h = u / 4, l0 = 8 * (u % 4);
        const u8* ql = b + 64 * h + l0;
        const u8* qh = b + 128 + 32 * h + l0;
        Raw r;
        r.qa[0] = ld_u32_a2(ql); r.qa[1] = ld_u32_a2(ql + 4);
        r.qb[0] = ld_u32_a2(ql + 32); r.qb[1] = ld_u32_a2(ql + 36);
        r.qh[0] = ld_u32_a2(qh); r.qh[1] = ld_u32_a2(qh + 4);
        const float d = ld_f16(b + 208);
#pragma unroll
        for (int s = 0; s < 4; ++s) r.dl[s] = d * (float)(signed char)b[192 + 8 * h + 2 * s + l0 / 16];
        return r;
    }
    static __device__ __forceinline__ void group(const Raw& r, u32 u, u32 s, float v[8]) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const u32 lowbyte = byte_of((s % 2) ? r.qb[i / 4] : r.qa[i / 4], i % 4);
            const u32 low = (lowbyte >> (4 * (s / 2))) & 0xF;
            const u32 high = (byte_of(r.qh[i / 4], i % 4) >> (2 * s)) & 3;
            v[i] = r.dl[s] * (float)((int)(low | (high << 4)) - 32);
        }
    }
};

// ---- matrix-vector products (few activation rows) ---------------------------------------------

// Warps per block (src/quant.rs: MV_WARPS), and units each lane loads before using them: 2
// measured no faster than 1 on an H100 (4096 x 4096 and 14336 x 4096 weights, 1 to 8 rows)
// and doubles the module's compile time.
#define QMV_WARPS 4
#define QMV_U 1

// out[m * n + row] = x[m * k ..] · w[row] for m < mrows (at most M). Each warp takes R
// consecutive weight rows (sharing every activation it reads); each block stages the
// activations in shared memory, `kt` columns (a multiple of 256, or all k) at a time (M · kt
// floats of dynamic shared memory; rows mrows.. are left as they are and their sums dropped).
// `x` is contiguous f32 and 16-byte aligned; `k` is a multiple of the block size.
template <typename B, int M, int R>
__device__ __forceinline__ void qmv(const u8* __restrict__ w, const float* __restrict__ x,
                                    float* __restrict__ out, u32 n, u32 k, u32 kt, u32 mrows) {
    extern __shared__ float4 xs4[];
    const float* xs = (const float*)xs4;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 row0 = (blockIdx.x * QMV_WARPS + warp) * R;
    const u32 nb = k / B::QK;
    // Rows past the end repeat the last row (their results are not stored): no divergence.
    const u8* wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = w + (u64)min(row0 + r, n - 1) * nb * B::BYTES;
    float acc[R][M];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
    for (u32 k0 = 0; k0 < k; k0 += kt) {
        const u32 len = min(kt, k - k0);
        __syncthreads();  // the previous slice is consumed
        const u32 q4 = len / 4;
        for (u32 i = threadIdx.x; i < mrows * q4; i += blockDim.x) {
            const u32 m = i / q4, j = i % q4;
            xs4[m * (kt / 4) + j] = ((const float4*)(x + (u64)m * k + k0))[j];
        }
        __syncthreads();
        const u32 b0 = k0 / B::QK;
        const u32 units = len / B::QK * B::UNITS;
        // QMV_U units per lane and row in flight: all their loads first, then the arithmetic.
        for (u32 t0 = lane; t0 < units; t0 += 32 * QMV_U) {
            typename B::Raw raw[QMV_U][R];
#pragma unroll
            for (int j = 0; j < QMV_U; ++j) {
                // Past the end: reload the last unit (not accumulated below).
                const u32 t = min(t0 + 32 * j, units - 1);
                const u32 b = t / B::UNITS, u = t % B::UNITS;
#pragma unroll
                for (int r = 0; r < R; ++r) raw[j][r] = B::load(wr[r] + (u64)(b0 + b) * B::BYTES, u);
            }
#pragma unroll
            for (int j = 0; j < QMV_U; ++j) {
                const u32 t = t0 + 32 * j;
                if (t >= units) break;
                const u32 b = t / B::UNITS, u = t % B::UNITS;
#pragma unroll
                for (u32 g = 0; g < B::NG; ++g) {
                    float v[R][8];
#pragma unroll
                    for (int r = 0; r < R; ++r) B::group(raw[j][r], u, g, v[r]);
                    const u32 e = b * B::QK + B::off(u, g);
#pragma unroll
                    for (int m = 0; m < M; ++m) {
                        const float4* xp = (const float4*)(xs + m * kt + e);
                        const float4 a = xp[0], c = xp[1];
#pragma unroll
                        for (int r = 0; r < R; ++r) {
                            float s = acc[r][m];
                            s += v[r][0] * a.x;
                            s += v[r][1] * a.y;
                            s += v[r][2] * a.z;
                            s += v[r][3] * a.w;
                            s += v[r][4] * c.x;
                            s += v[r][5] * c.y;
                            s += v[r][6] * c.z;
                            s += v[r][7] * c.w;
                            acc[r][m] = s;
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) {
            float s = acc[r][m];
#pragma unroll
            for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
            acc[r][m] = s;
        }
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (row0 + r < n) {
#pragma unroll
                for (int m = 0; m < M; ++m)
                    if (m < mrows) out[(u64)m * n + row0 + r] = acc[r][m];
            }
        }
    }
}

// Rows per warp for M activation rows: 2 for one (more warps in flight for the weight
// stream), 4 otherwise (each activation read serves more rows).
#define QMV_R(M) ((M) == 1 ? 2 : 4)
// qmv_<T>_m<M> takes 1..=M activation rows (M = 1, 2, 4, 8: fewer kernels to compile).
#define QMV_K(T, M) \
    extern "C" __global__ void __launch_bounds__(32 * QMV_WARPS) \
    qmv_##T##_m##M(const u8* w, const float* x, float* out, u32 n, u32 k, u32 kt, u32 mrows) { \
        qmv<B##T, M, QMV_R(M)>(w, x, out, n, k, kt, mrows); \
    }
#define QMV_ALL_M(T) QMV_K(T, 1) QMV_K(T, 2) QMV_K(T, 4) QMV_K(T, 8)

// ---- dequantization to bf16 ------------------------------------------------------------------

// Every unit of `units` (the whole tensor's blocks times UNITS, blocks contiguous across rows)
// to bf16 at its elements' places in `out` (16-byte aligned).
template <typename B>
__device__ __forceinline__ void qdq_bf16(u32 units, const u8* __restrict__ w, u16* __restrict__ out) {
    GRID_STRIDE(t, units) {
        const u32 b = t / B::UNITS, u = t % B::UNITS;
        const typename B::Raw raw = B::load(w + (u64)b * B::BYTES, u);
#pragma unroll
        for (u32 g = 0; g < B::NG; ++g) {
            float v[8];
            B::group(raw, u, g, v);
            uint4 p;
            p.x = (u32)f2b(v[0]) | ((u32)f2b(v[1]) << 16);
            p.y = (u32)f2b(v[2]) | ((u32)f2b(v[3]) << 16);
            p.z = (u32)f2b(v[4]) | ((u32)f2b(v[5]) << 16);
            p.w = (u32)f2b(v[6]) | ((u32)f2b(v[7]) << 16);
            *(uint4*)(out + (u64)b * B::QK + B::off(u, g)) = p;
        }
    }
}

#define QDQ_K(T) \
    extern "C" __global__ void qdq_##T##_bf16(u32 units, const u8* w, u16* out) { qdq_bf16<B##T>(units, w, out); }

#define QUANT_TYPE(T) QMV_ALL_M(T) QDQ_K(T)
QUANT_TYPE(Q4_0)
QUANT_TYPE(Q4_1)
QUANT_TYPE(Q8_0)
QUANT_TYPE(Q4_K)
QUANT_TYPE(Q6_K)

// ---- activations as two bf16 planes ----------------------------------------------------------

// x ≈ hi + lo with hi = bf16(x), lo = bf16(x - hi): about 16 bits of mantissa. A value whose
// hi is not finite gets lo = 0 (no inf - inf).
extern "C" __global__ void qsplit_bf16(u32 n, const float* x, u16* hi, u16* lo) {
    GRID_STRIDE(i, n) {
        const float v = x[i];
        const u16 h = f2b(v);
        const float hv = b2f(h);
        hi[i] = h;
        lo[i] = isfinite(hv) ? f2b(v - hv) : (u16)0;
    }
}
