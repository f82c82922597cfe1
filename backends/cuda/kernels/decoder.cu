// The fused decoder (src/decoder.rs): a Llama-style forward pass over weights of one dtype T
// (f32, f16 or bf16), with f32 activations and a KV cache in T.
//
// Decode (one token) runs the matrix-vector kernels `dec_mv_*`: every block stages its input
// vector in shared memory as f32 (times the norm weight when there is one; the RMS scale is
// applied in the epilogue), then each warp owns whole weight rows, streams them with 16-byte
// loads that bypass L1 (8 or 16 in flight per lane) and reduces with warp shuffles.
// Epilogues are fused: q/k/v bias + RoPE + KV-cache append, the residual add, SiLU(gate)·up.
// Prompts (several tokens) use cuBLAS for the products and the multi-row kernels
// `dec_rmsrows`, `dec_qkvpost`, `dec_swiglu`, `dec_tocast`. Attention (`dec_attn`) serves
// both: flash-decoding over keys split across warps and blocks, the last block of a head
// group merging the splits' partial results.
//
// The position of the first new token is read from device memory (`posp`), never passed by
// value, so the decode step can be captured once as a CUDA graph and replayed.
//
// Measured on an H100 (Llama-3.2-1B shape, bf16): prefetching the next rows into L2 before
// the staging, prefetching the next products' weights during attention and programmatic
// dependent launch were each slower (2-10%) and are not used; the L1 prefetch of K/V rows in
// attention helps (2-3%).

#define DEC_FULL 0xffffffffu
#define AT_MAXS 64
#define DEC_NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float dec_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(DEC_FULL, v, o);
    return v;
}
__device__ __forceinline__ float dec_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(DEC_FULL, v, o));
    return v;
}

// Sum over the block (every thread gets the result). `red` holds 33 floats.
__device__ __forceinline__ float dec_block_sum(float v, float* red) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = dec_warp_sum(v);
    __syncthreads();  // `red` may still be read by a previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < nw ? red[lane] : 0.f;
        s = dec_warp_sum(s);
        if (lane == 0) red[32] = s;
    }
    __syncthreads();
    return red[32];
}

// An L2 policy for data read once per token (the weights): evicted first, so the KV cache,
// activations and norm weights stay in L2 across the step.
__device__ __forceinline__ u64 dec_evict_first() {
    u64 pol;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    return pol;
}

// A 16-byte load of weights: not kept in L1, L2 fetches 256 B, evicted first.
__device__ __forceinline__ uint4 dec_ld_stream(const void* p, u64 pol) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.L2::cache_hint.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p), "l"(pol));
    return r;
}

// Values of T in 16 bytes, and their conversion to f32.
template <typename T> struct DecVec { static const int N = 8; };
template <> struct DecVec<f32> { static const int N = 4; };

template <typename T> __device__ __forceinline__ void dec_unpack(uint4 r, float* f);
template <> __device__ __forceinline__ void dec_unpack<bf16>(uint4 r, float* f) {
    const u32 w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
template <> __device__ __forceinline__ void dec_unpack<f16>(uint4 r, float* f) {
    const u32 w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = h2f((u16)(w[i] & 0xffffu));
        f[2 * i + 1] = h2f((u16)(w[i] >> 16));
    }
}
template <> __device__ __forceinline__ void dec_unpack<f32>(uint4 r, float* f) {
    f[0] = __uint_as_float(r.x);
    f[1] = __uint_as_float(r.y);
    f[2] = __uint_as_float(r.z);
    f[3] = __uint_as_float(r.w);
}

// ---- matrix-vector products (decode) ------------------------------------------------------

// Stage x[0..K) (f32, K a multiple of 4, 16-byte aligned) in shared memory, times the norm
// weight `g` when given, and return the RMS norm's scale 1 / sqrt(mean(x²) + eps) (1 without
// `g`): the products' epilogues multiply by it. Every thread's loads are issued together.
// Ends with a barrier.
__device__ __forceinline__ float dec_stage_x(float* xs, float* red, const float* x, const float* g,
                                             u32 K, float eps) {
    const u32 n4 = K >> 2;
    const float4* x4 = (const float4*)x;
    const float4* g4 = (const float4*)g;
    float4* xs4 = (float4*)xs;
    float ss = 0.f;
    for (u32 b = 0; b < n4; b += 4 * blockDim.x) {
        float4 v[4], gv[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const u32 i = b + u * blockDim.x + threadIdx.x;
            if (i < n4) {
                v[u] = x4[i];
                if (g) gv[u] = g4[i];
            }
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const u32 i = b + u * blockDim.x + threadIdx.x;
            if (i < n4) {
                float4 t = v[u];
                if (g) {
                    ss += t.x * t.x + t.y * t.y + t.z * t.z + t.w * t.w;
                    t.x *= gv[u].x;
                    t.y *= gv[u].y;
                    t.z *= gv[u].z;
                    t.w *= gv[u].w;
                }
                xs4[i] = t;
            }
        }
    }
    float r = 1.f;
    if (g) {
        ss = dec_block_sum(ss, red);
        r = 1.0f / sqrtf(ss / (float)K + eps);
    }
    __syncthreads();
    return r;
}

// The dot products of NR rows `w[r]` (K values of T each, 16-byte aligned, K a multiple of
// the vector width) with xs, by one warp: lane l reads the 16-byte vectors l, l + 32, ...;
// U vectors per row are loaded before any is used, so NR·U loads are in flight per lane.
// Every lane returns the sums.
template <typename T, int NR, int U>
__device__ __forceinline__ void dec_rows_dot(const T* const* w, const float* xs, u32 K, float* acc) {
    constexpr int V = DecVec<T>::N;
    const u32 lane = threadIdx.x & 31;
    const u32 step = 32 * V;
    const u64 pol = dec_evict_first();
#pragma unroll
    for (int r = 0; r < NR; ++r) acc[r] = 0.f;
    u32 k = lane * V;
    for (; k + (U - 1) * step < K; k += U * step) {
        uint4 raw[NR][U];
#pragma unroll
        for (int r = 0; r < NR; ++r)
#pragma unroll
            for (int u = 0; u < U; ++u) raw[r][u] = dec_ld_stream(w[r] + k + u * step, pol);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float xv[V];
            const float4* xp = (const float4*)(xs + k + u * step);
#pragma unroll
            for (int q = 0; q < V / 4; ++q) {
                const float4 t = xp[q];
                xv[4 * q] = t.x;
                xv[4 * q + 1] = t.y;
                xv[4 * q + 2] = t.z;
                xv[4 * q + 3] = t.w;
            }
#pragma unroll
            for (int r = 0; r < NR; ++r) {
                float f[V];
                dec_unpack<T>(raw[r][u], f);
#pragma unroll
                for (int e = 0; e < V; ++e) acc[r] = fmaf(f[e], xv[e], acc[r]);
            }
        }
    }
#pragma unroll 1
    for (; k < K; k += step) {
        float xv[V];
        const float4* xp = (const float4*)(xs + k);
#pragma unroll
        for (int q = 0; q < V / 4; ++q) {
            const float4 t = xp[q];
            xv[4 * q] = t.x;
            xv[4 * q + 1] = t.y;
            xv[4 * q + 2] = t.z;
            xv[4 * q + 3] = t.w;
        }
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            float f[V];
            dec_unpack<T>(dec_ld_stream(w[r] + k, pol), f);
#pragma unroll
            for (int e = 0; e < V; ++e) acc[r] = fmaf(f[e], xv[e], acc[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < NR; ++r) acc[r] = dec_warp_sum(acc[r]);
}

// out[n] (=|+=) W[n, :] · norm(x) for n < N. `accumulate` adds to out (the residual).
template <typename T>
__device__ __forceinline__ void dec_mv_plain(const T* w, const float* x, const float* g, float eps,
                                             float* out, u32 N, u32 K, u32 accumulate) {
    extern __shared__ float4 dec_smem4[];
    __shared__ float red[33];
    float* xs = (float*)dec_smem4;
    const u32 lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const u32 n0 = blockIdx.x * nw + (threadIdx.x >> 5);
    const float sc = dec_stage_x(xs, red, x, g, K, eps);
    for (u32 n = n0; n < N; n += gridDim.x * nw) {
        const T* rows[1] = {w + (u64)n * K};
        // The residual, loaded before the product so its latency overlaps.
        const float prev = accumulate && lane == 0 ? out[n] : 0.f;
        float acc[1];
        dec_rows_dot<T, 1, 8>(rows, xs, K, acc);
        if (lane == 0) out[n] = prev + acc[0] * sc;
    }
}

// h[n] = silu(Wg[n, :] · norm(x)) · (Wu[n, :] · norm(x)).
template <typename T>
__device__ __forceinline__ void dec_mv_swiglu(const T* wg, const T* wu, const float* x,
                                              const float* g, float eps, float* h, u32 N, u32 K) {
    extern __shared__ float4 dec_smem4[];
    __shared__ float red[33];
    float* xs = (float*)dec_smem4;
    const u32 lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const u32 n0 = blockIdx.x * nw + (threadIdx.x >> 5);
    const float sc = dec_stage_x(xs, red, x, g, K, eps);
    for (u32 n = n0; n < N; n += gridDim.x * nw) {
        const T* rows[2] = {wg + (u64)n * K, wu + (u64)n * K};
        float acc[2];
        dec_rows_dot<T, 2, 8>(rows, xs, K, acc);
        if (lane == 0) {
            const float a = acc[0] * sc, b = acc[1] * sc;
            h[n] = a / (1.0f + expf(-a)) * b;
        }
    }
}

// The two rows a, b (of the concatenated q|k|v outputs) rotated together by RoPE, for pair p:
// head p / (hd/2), index i = p % (hd/2) of its frequency.
__device__ __forceinline__ void dec_pair(u32 p, u32 hd, u32 inter, u32* head, u32* i, u32* a,
                                         u32* b) {
    const u32 half = hd >> 1;
    *head = p / half;
    *i = p - *head * half;
    *a = *head * hd + (inter ? 2 * *i : *i);
    *b = *a + (inter ? 1 : half);
}

// RoPE (cosine cs, sine sn; k and q heads only) and the store of one pair (rows a, b) of
// q/k/v outputs, biases added, for the token at `pos`: q rows go to q (f32, this token's row),
// k and v rows to the caches (row `pos`).
template <typename T>
__device__ __forceinline__ void dec_qkv_out(u32 head, u32 a, u32 b, float va, float vb, float cs,
                                            float sn, u32 pos, float* q, T* kc, T* vc, u32 nh,
                                            u32 nkv, u32 hd) {
    const u32 qd = nh * hd, kvd = nkv * hd;
    if (head < nh + nkv) {
        const float ra = va * cs - vb * sn;
        const float rb = va * sn + vb * cs;
        va = ra;
        vb = rb;
    }
    if (head < nh) {
        q[a] = va;
        q[b] = vb;
    } else if (head < nh + nkv) {
        kc[(u64)pos * kvd + (a - qd)] = from_f32<T>(va);
        kc[(u64)pos * kvd + (b - qd)] = from_f32<T>(vb);
    } else {
        vc[(u64)pos * kvd + (a - qd - kvd)] = from_f32<T>(va);
        vc[(u64)pos * kvd + (b - qd - kvd)] = from_f32<T>(vb);
    }
}

// dec_qkv_out with the bias and the rotation of `pos` looked up.
template <typename T>
__device__ __forceinline__ void dec_qkv_store(u32 head, u32 i, u32 a, u32 b, float va, float vb,
                                              const float* bias, const float* cos_t,
                                              const float* sin_t, u32 pos, float* q, T* kc, T* vc,
                                              u32 nh, u32 nkv, u32 hd) {
    const u32 half = hd >> 1;
    if (bias) {
        va += bias[a];
        vb += bias[b];
    }
    float cs = 1.f, sn = 0.f;
    if (head < nh + nkv) {
        cs = cos_t[(u64)pos * half + i];
        sn = sin_t[(u64)pos * half + i];
    }
    dec_qkv_out<T>(head, a, b, va, vb, cs, sn, pos, q, kc, vc, nh, nkv, hd);
}

// q/k/v of one token: norm(x) times wq|wk|wv, a warp per RoPE pair of rows, then bias, RoPE,
// q into `q` and k/v into the caches at position *posp.
template <typename T>
__device__ __forceinline__ void dec_mv_qkv(const T* wq, const T* wk, const T* wv, const float* x,
                                           const float* g, float eps, const float* bias,
                                           const float* cos_t, const float* sin_t, const u32* posp,
                                           float* q, T* kc, T* vc, u32 K, u32 nh, u32 nkv, u32 hd,
                                           u32 inter) {
    extern __shared__ float4 dec_smem4[];
    __shared__ float red[33];
    float* xs = (float*)dec_smem4;
    const u32 lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const u32 qd = nh * hd, kvd = nkv * hd;
    const u32 npairs = (nh + 2 * nkv) * (hd >> 1);
    const u32 p0 = blockIdx.x * nw + (threadIdx.x >> 5);
    // The rows of pair p: a and b of wq, wk or wv.
    auto rows_of = [&](u32 p, const T** rows, u32* head, u32* i, u32* a, u32* b) {
        dec_pair(p, hd, inter, head, i, a, b);
        const T* base;
        u32 off;
        if (*head < nh) {
            base = wq;
            off = 0;
        } else if (*head < nh + nkv) {
            base = wk;
            off = qd;
        } else {
            base = wv;
            off = qd + kvd;
        }
        rows[0] = base + (u64)(*a - off) * K;
        rows[1] = base + (u64)(*b - off) * K;
    };
    const float sc = dec_stage_x(xs, red, x, g, K, eps);
    const u32 pos = *posp;
    for (u32 p = p0; p < npairs; p += gridDim.x * nw) {
        const T* rows[2];
        u32 head, i, a, b;
        rows_of(p, rows, &head, &i, &a, &b);
        // The epilogue's inputs, loaded before the products so their latency overlaps.
        float ba = 0.f, bb = 0.f, cs = 1.f, sn = 0.f;
        if (lane == 0) {
            if (bias) {
                ba = bias[a];
                bb = bias[b];
            }
            if (head < nh + nkv) {
                cs = cos_t[(u64)pos * (hd >> 1) + i];
                sn = sin_t[(u64)pos * (hd >> 1) + i];
            }
        }
        float acc[2];
        dec_rows_dot<T, 2, 8>(rows, xs, K, acc);
        if (lane == 0)
            dec_qkv_out<T>(head, a, b, acc[0] * sc + ba, acc[1] * sc + bb, cs, sn, pos, q, kc, vc,
                           nh, nkv, hd);
    }
}

// ---- multi-token helpers (prompts) --------------------------------------------------------

// out[r, :] = T(norm(x[r, :]) · g), one block per row.
template <typename T>
__device__ __forceinline__ void dec_rmsrows(const float* x, const float* g, T* out, u32 d, float eps) {
    __shared__ float red[33];
    const float* xr = x + (u64)blockIdx.x * d;
    T* o = out + (u64)blockIdx.x * d;
    float ss = 0.f;
    for (u32 i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
    ss = dec_block_sum(ss, red);
    const float r = 1.0f / sqrtf(ss / (float)d + eps);
    for (u32 i = threadIdx.x; i < d; i += blockDim.x) o[i] = from_f32<T>(xr[i] * r * g[i]);
}

// Bias, RoPE and cache append for M tokens at positions *posp + m, from the products
// qkv[m, :] (f32, q|k|v concatenated); q rows go to q[m, :].
template <typename T>
__device__ __forceinline__ void dec_qkvpost(const float* qkv, const float* bias, const float* cos_t,
                                            const float* sin_t, const u32* posp, float* q, T* kc,
                                            T* vc, u32 M, u32 nh, u32 nkv, u32 hd, u32 inter) {
    const u32 qd = nh * hd, tot = (nh + 2 * nkv) * hd;
    const u32 npairs = (nh + 2 * nkv) * (hd >> 1);
    const u32 pos0 = *posp;
    GRID_STRIDE(idx, M * npairs) {
        const u32 m = idx / npairs, p = idx - m * npairs;
        u32 head, i, a, b;
        dec_pair(p, hd, inter, &head, &i, &a, &b);
        const float* row = qkv + (u64)m * tot;
        dec_qkv_store<T>(head, i, a, b, row[a], row[b], bias, cos_t, sin_t, pos0 + m,
                         q + (u64)m * qd, kc, vc, nh, nkv, hd);
    }
}

// ---- attention ----------------------------------------------------------------------------

#define AT_WARPS 8

// Causal attention of query heads over the cache. Block (x, y, z): x picks a KV head g and a
// batch of at most G of its query heads, y one of S = gridDim.y splits of the keys, z the
// token m (position *posp + m, attending to keys 0..=position). q and out are f32
// [M, nh·hd]; the caches T [positions, nkv·hd]; D ≥ hd / 32 values per lane.
//
// Keys go in chunks of 32, one key per lane; warp w of split s takes chunks s·W + w, then
// + S·W, ... Each lane first prefetches its key's K and V rows into L1 (the next chunk's while
// it works on this one), computes its key's scores for the G heads (q in shared memory), the
// warp runs an online softmax over the chunk (running max and sum per head), then each lane
// accumulates p·v for its D dims of every key of the chunk. The loops are short and not
// unrolled across keys: the code stays small, since it runs about once per launch and an
// instruction-cache miss costs more than the arithmetic. The block merges its warps; with
// S == 1 it writes out, else partial results (max, sum, values) per head and split, and the
// last block of the head batch to finish merges them.
// Dynamic shared memory: G·hd·(1 + AT_WARPS) floats.
template <typename T>
__device__ __forceinline__ void dec_prefetch_rows(const T* kbase, const T* vbase, u32 key, u32 L,
                                                  u32 kvd, u32 hd) {
    if (key < L) {
        const char* kr = (const char*)(kbase + (u64)key * kvd);
        const char* vr = (const char*)(vbase + (u64)key * kvd);
        for (u32 b = 0; b < hd * sizeof(T); b += 128) {
            asm volatile("prefetch.global.L1 [%0];" ::"l"(kr + b));
            asm volatile("prefetch.global.L1 [%0];" ::"l"(vr + b));
        }
    }
}

template <typename T, int G, int D>
__device__ __forceinline__ void dec_attn(const float* q, const T* kc, const T* vc, float* out,
                                         float* part, u32* cnt, const u32* posp, u32 nh, u32 nkv,
                                         u32 hd, float scale) {
    constexpr int V = DecVec<T>::N;
    extern __shared__ float4 dec_smem4[];
    __shared__ float ps[AT_WARPS][G][32];
    __shared__ float wm[AT_WARPS][G], wl[AT_WARPS][G];
    __shared__ u32 is_last;
    const u32 tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const u32 group = nh / nkv;
    const u32 nbg = (group + G - 1) / G;
    const u32 g = blockIdx.x / nbg, hb = blockIdx.x - g * nbg;
    const u32 h0 = g * group + hb * G;
    const u32 nhb = min((u32)G, group - hb * G);
    const u32 S = gridDim.y, s = blockIdx.y, m = blockIdx.z;
    const u32 qd = nh * hd, kvd = nkv * hd;
    float* qs = (float*)dec_smem4;  // [G][hd], zero past nhb heads
    float* wacc = qs + G * hd;      // [AT_WARPS][G][hd]
    const T* kbase = kc + (u64)g * hd;
    const T* vbase = vc + (u64)g * hd;
    const u32 L = *posp + m + 1;
    const u32 nchunks = (L + 31) >> 5;
    // Splits past the keys have nothing to do; with one split left it writes `out` itself.
    const u32 nused = min(S, (nchunks + AT_WARPS - 1) / AT_WARPS);
    if (s >= nused) return;
    u32 c = s * AT_WARPS + w;
    if (c < nchunks) dec_prefetch_rows(kbase, vbase, c * 32 + lane, L, kvd, hd);
    for (u32 i = tid; i < G * hd; i += blockDim.x)
        qs[i] = i < nhb * hd ? q[(u64)m * qd + (u64)h0 * hd + i] * scale : 0.f;
    __syncthreads();

    float rm[G], rl[G], acc[G][D];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        rm[h] = DEC_NEG_INF;
        rl[h] = 0.f;
#pragma unroll
        for (int i = 0; i < D; ++i) acc[h][i] = 0.f;
    }
    for (; c < nchunks; c += S * AT_WARPS) {
        const u32 next = c + S * AT_WARPS;
        if (next < nchunks) dec_prefetch_rows(kbase, vbase, next * 32 + lane, L, kvd, hd);
        const u32 j = c * 32 + lane;
        const bool valid = j < L;
        float sc[G];
#pragma unroll
        for (int h = 0; h < G; ++h) sc[h] = 0.f;
        if (valid) {
            const T* krow = kbase + (u64)j * kvd;
#pragma unroll 1
            for (u32 d0 = 0; d0 < hd; d0 += V) {
                float kf[V];
                dec_unpack<T>(*(const uint4*)(krow + d0), kf);
#pragma unroll
                for (int h = 0; h < G; ++h) {
                    const float4* qh = (const float4*)(qs + h * hd + d0);
#pragma unroll
                    for (int e4 = 0; e4 < V / 4; ++e4) {
                        const float4 t = qh[e4];
                        sc[h] = fmaf(t.x, kf[4 * e4], sc[h]);
                        sc[h] = fmaf(t.y, kf[4 * e4 + 1], sc[h]);
                        sc[h] = fmaf(t.z, kf[4 * e4 + 2], sc[h]);
                        sc[h] = fmaf(t.w, kf[4 * e4 + 3], sc[h]);
                    }
                }
            }
        }
#pragma unroll
        for (int h = 0; h < G; ++h) {
            const float x = valid ? sc[h] : DEC_NEG_INF;
            const float nm = fmaxf(rm[h], dec_warp_max(x));  // finite: lane 0 is a key
            const float p = valid ? expf(x - nm) : 0.f;
            const float corr = expf(rm[h] - nm);
            rl[h] = rl[h] * corr + dec_warp_sum(p);
            rm[h] = nm;
#pragma unroll
            for (int i = 0; i < D; ++i) acc[h][i] *= corr;
            ps[w][h][lane] = p;
        }
        __syncwarp();
        const u32 nk = min(32u, L - c * 32);
        const T* vrow = vbase + (u64)(c * 32) * kvd;
#pragma unroll 2
        for (u32 kk = 0; kk < nk; ++kk, vrow += kvd) {
            float vv[D];
#pragma unroll
            for (int i = 0; i < D; ++i) {
                const u32 d = i * 32 + lane;
                vv[i] = d < hd ? to_f32(vrow[d]) : 0.f;
            }
#pragma unroll
            for (int h = 0; h < G; ++h) {
                const float p = ps[w][h][kk];
#pragma unroll
                for (int i = 0; i < D; ++i) acc[h][i] = fmaf(p, vv[i], acc[h][i]);
            }
        }
        __syncwarp();
    }
    // Merge the warps of this block.
#pragma unroll
    for (int h = 0; h < G; ++h) {
        if (lane == 0) {
            wm[w][h] = rm[h];
            wl[w][h] = rl[h];
        }
#pragma unroll
        for (int i = 0; i < D; ++i) {
            const u32 d = i * 32 + lane;
            if (d < hd) wacc[((u64)w * G + h) * hd + d] = acc[h][i];
        }
    }
    __syncthreads();
    for (u32 idx = tid; idx < nhb * hd; idx += blockDim.x) {
        const u32 h = idx / hd, d = idx - h * hd;
        float mx = DEC_NEG_INF;
        for (int ww = 0; ww < AT_WARPS; ++ww)
            if (wl[ww][h] > 0.f) mx = fmaxf(mx, wm[ww][h]);
        float l = 0.f, a = 0.f;
        for (int ww = 0; ww < AT_WARPS; ++ww) {
            if (wl[ww][h] > 0.f) {
                const float e = expf(wm[ww][h] - mx);
                l += wl[ww][h] * e;
                a += wacc[((u64)ww * G + h) * hd + d] * e;
            }
        }
        const u32 head = h0 + h;
        if (nused == 1) {
            out[(u64)m * qd + (u64)head * hd + d] = a / l;
        } else {
            float* pp = part + (((u64)m * nh + head) * S + s) * (hd + 2);
            pp[2 + d] = a;
            if (d == 0) {
                pp[0] = mx;
                pp[1] = l;
            }
        }
    }
    if (nused == 1) return;
    // The last block of this head batch (and token) to finish merges the splits.
    __threadfence();
    __syncthreads();
    u32* counter = cnt + (u64)m * gridDim.x + blockIdx.x;
    if (tid == 0) is_last = atomicAdd(counter, 1u) == nused - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    // Gather (max, sum) of the splits, turn them into weights
    // per head, then sum the weighted partial values (loads of several splits in flight).
    __shared__ float sm_m[G][AT_MAXS], sm_l[G][AT_MAXS];
    for (u32 idx = tid; idx < nhb * nused; idx += blockDim.x) {
        const u32 h = idx / nused, ss = idx - h * nused;
        const float* pp = part + (((u64)m * nh + h0 + h) * S + ss) * (hd + 2);
        sm_m[h][ss] = __ldcg(pp);
        sm_l[h][ss] = __ldcg(pp + 1);
    }
    __syncthreads();
    if (tid < nhb) {
        float mx = DEC_NEG_INF;
        for (u32 ss = 0; ss < nused; ++ss)
            if (sm_l[tid][ss] > 0.f) mx = fmaxf(mx, sm_m[tid][ss]);
        float l = 0.f;
        for (u32 ss = 0; ss < nused; ++ss)
            if (sm_l[tid][ss] > 0.f) l += sm_l[tid][ss] * expf(sm_m[tid][ss] - mx);
        for (u32 ss = 0; ss < nused; ++ss)
            sm_m[tid][ss] = sm_l[tid][ss] > 0.f ? expf(sm_m[tid][ss] - mx) / l : 0.f;
    }
    __syncthreads();
    for (u32 idx = tid; idx < nhb * hd; idx += blockDim.x) {
        const u32 h = idx / hd, d = idx - h * hd;
        const u32 head = h0 + h;
        const float* pb = part + ((u64)m * nh + head) * S * (hd + 2) + 2 + d;
        float a = 0.f;
#pragma unroll 4
        for (u32 ss = 0; ss < nused; ++ss) {
            const float f = sm_m[h][ss];
            const float v = __ldcg(pb + (u64)ss * (hd + 2));
            a += f != 0.f ? f * v : 0.f;
        }
        out[(u64)m * qd + (u64)head * hd + d] = a;
    }
    if (tid == 0) *counter = 0;
}

// ---- greedy pick -----------------------------------------------------------------------------
// The index of the largest of `n` logits: the lowest index among equal maxima, NaN never
// chosen, 0 when every value is NaN (as `tensor_core::decoder::argmax_f32`). One block.
#define ARGMAX_NONE 0xffffffffu
__device__ __forceinline__ void argmax_pick(float& v, u32& i, float v2, u32 i2) {
    if (i2 == ARGMAX_NONE) return;
    if (i == ARGMAX_NONE || v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}
extern "C" __global__ void __launch_bounds__(1024) dec_argmax(const float* x, u32 n, u32* out) {
    __shared__ float sv[32];
    __shared__ u32 si[32];
    float best = __int_as_float(0xff800000);
    u32 at = ARGMAX_NONE;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = x[i];
        if (v > best || (at == ARGMAX_NONE && v == best)) {
            best = v;
            at = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_down_sync(0xffffffffu, best, o);
        const u32 i2 = __shfl_down_sync(0xffffffffu, at, o);
        argmax_pick(best, at, v2, i2);
    }
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31u;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = at;
    }
    __syncthreads();
    if (warp == 0) {
        const u32 warps = (blockDim.x + 31u) >> 5;
        best = lane < warps ? sv[lane] : __int_as_float(0xff800000);
        at = lane < warps ? si[lane] : ARGMAX_NONE;
        for (int o = 16; o > 0; o >>= 1) {
            const float v2 = __shfl_down_sync(0xffffffffu, best, o);
            const u32 i2 = __shfl_down_sync(0xffffffffu, at, o);
            argmax_pick(best, at, v2, i2);
        }
        if (lane == 0) *out = at == ARGMAX_NONE ? 0u : at;
    }
}

// ---- kernels ------------------------------------------------------------------------------

// x[m, :] = embedding[tok[m], :] as f32.
#define DEC_EMBED(E)                                                                               \
    extern "C" __global__ void dec_embed_##E(const E* emb, const u32* tok, float* x, u32 d,        \
                                             u32 M) {                                              \
        GRID_STRIDE(i, M * d) {                                                                    \
            const u32 m = i / d;                                                                   \
            x[i] = to_f32(emb[(u64)tok[m] * d + (i - m * d)]);                                     \
        }                                                                                          \
    }
DEC_EMBED(f16)
DEC_EMBED(bf16)
DEC_EMBED(f32)

#define DEC_KERNELS(T)                                                                             \
    extern "C" __global__ void dec_mv_plain_##T(const T* w, const float* x, const float* g,        \
                                                float eps, float* out, u32 N, u32 K,               \
                                                u32 accumulate) {                                  \
        dec_mv_plain<T>(w, x, g, eps, out, N, K, accumulate);                                      \
    }                                                                                              \
    extern "C" __global__ void dec_mv_swiglu_##T(const T* wg, const T* wu, const float* x,         \
                                                 const float* g, float eps, float* h, u32 N,       \
                                                 u32 K) {                                          \
        dec_mv_swiglu<T>(wg, wu, x, g, eps, h, N, K);                                              \
    }                                                                                              \
    extern "C" __global__ void dec_mv_qkv_##T(                                                     \
        const T* wq, const T* wk, const T* wv, const float* x, const float* g, float eps,          \
        const float* bias, const float* cos_t, const float* sin_t, const u32* posp, float* q,      \
        T* kc, T* vc, u32 K, u32 nh, u32 nkv, u32 hd, u32 inter) {                                 \
        dec_mv_qkv<T>(wq, wk, wv, x, g, eps, bias, cos_t, sin_t, posp, q, kc, vc, K, nh, nkv, hd,  \
                      inter);                                                                      \
    }                                                                                              \
    extern "C" __global__ void dec_rmsrows_##T(const float* x, const float* g, T* out, u32 d,      \
                                               float eps) {                                        \
        dec_rmsrows<T>(x, g, out, d, eps);                                                         \
    }                                                                                              \
    extern "C" __global__ void dec_qkvpost_##T(const float* qkv, const float* bias,                \
                                               const float* cos_t, const float* sin_t,             \
                                               const u32* posp, float* q, T* kc, T* vc, u32 M,     \
                                               u32 nh, u32 nkv, u32 hd, u32 inter) {               \
        dec_qkvpost<T>(qkv, bias, cos_t, sin_t, posp, q, kc, vc, M, nh, nkv, hd, inter);           \
    }                                                                                              \
    extern "C" __global__ void dec_swiglu_##T(const float* g, const float* u, T* y, u32 n) {       \
        GRID_STRIDE(i, n) y[i] = from_f32<T>(g[i] / (1.0f + expf(-g[i])) * u[i]);                  \
    }                                                                                              \
    extern "C" __global__ void dec_tocast_##T(const float* x, T* y, u32 n) {                       \
        GRID_STRIDE(i, n) y[i] = from_f32<T>(x[i]);                                                \
    }

#define DEC_ATTN(T, G, D)                                                                          \
    extern "C" __global__ void __launch_bounds__(AT_WARPS * 32)                                    \
        dec_attn_##T##_g##G##_d##D(const float* q, const T* kc, const T* vc, float* out,           \
                                   float* part, u32* cnt, const u32* posp, u32 nh, u32 nkv,        \
                                   u32 hd, float scale) {                                          \
        dec_attn<T, G, D>(q, kc, vc, out, part, cnt, posp, nh, nkv, hd, scale);                    \
    }
// Query heads per block G ∈ {1, 2, 4, 8}; values per lane D ≥ head dim / 32 ∈ {2, 4, 8}.
#define DEC_ATTN_D(T, G) DEC_ATTN(T, G, 2) DEC_ATTN(T, G, 4) DEC_ATTN(T, G, 8)
#define DEC_ATTN_T(T) DEC_ATTN_D(T, 1) DEC_ATTN_D(T, 2) DEC_ATTN_D(T, 4) DEC_ATTN_D(T, 8)
DEC_ATTN_T(f16)
DEC_ATTN_T(bf16)
DEC_ATTN_T(f32)

DEC_KERNELS(f16)
DEC_KERNELS(bf16)
DEC_KERNELS(f32)
