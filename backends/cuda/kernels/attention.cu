// Flash-style attention: forward with an online softmax over key tiles (the Lq × Lk score
// matrix is never stored), and the FlashAttention-2 backward that recomputes probabilities
// from the saved log-sum-exp, in two kernels (dK/dV per key tile looping over queries, dQ per
// query tile looping over keys) so that no output is written by two blocks.
//
// Two families of kernels:
// - `simt`: any float dtype and head dims, computing in the prelude's compute type (f32 for
//   the 16-bit floats and f32, f64 for f64), K/V tiles staged in shared memory.
// - `tc`: f16/bf16 with D = Dv ∈ {32, 64, 96, 128}, on mma.sync m16n8k16 tensor-core
//   instructions with f32 accumulators (probabilities and dS rounded to 16 bits as operands).
//
// Score of query row i (absolute position pos = Lk − Lq + i) and key j:
//   s = (q·scale)·k + slope_h·(j − pos) + bias[b, h, i, j], −inf where causal hides j > pos or
//   the window hides |pos − j| ≥ window. Every kernel takes one `AttnArgs` by value.

struct AttnRows {
    // Row (b, h, i) of a [B, H, L, D] view starts at off + b·s0 + h·s1 + i·s2 (inner stride 1).
    u64 off, s0, s1, s2;
};

struct AttnArgs {
    // Device pointers (0 when absent).
    u64 q, k, v, o, lse, dout, dq, dk, dv, bias, alibi, delta, part;
    AttnRows qr, kr, vr, orr, dor;
    // Bias view: offset and strides over [B, Hq, Lq, Lk] (0 for broadcast dims).
    u64 boff, bs0, bs1, bs2, bs3;
    u64 B, HQ, HKV, G, LQ, LK, D, DV;
    // window ≤ 0: none.
    i64 window;
    u64 causal;
    f64 scale;
    // Key splits of the forward (partials in `part`, merged by attn_combine).
    u64 nsplit;
    // SIMT forward: rows per block, keys per tile.
    u64 rb, bk;
};

extern __shared__ __align__(16) unsigned char attn_smem[];

template <typename A> __device__ __forceinline__ A attn_neg_inf();
template <> __device__ __forceinline__ float attn_neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double attn_neg_inf<double>() { return __longlong_as_double(0xfff0000000000000ULL); }
__device__ __forceinline__ float attn_exp(float x) { return expf(x); }
__device__ __forceinline__ double attn_exp(double x) { return exp(x); }
__device__ __forceinline__ float attn_log(float x) { return logf(x); }
__device__ __forceinline__ double attn_log(double x) { return log(x); }
__device__ __forceinline__ bool attn_finite(float x) { return isfinite(x); }
__device__ __forceinline__ bool attn_finite(double x) { return isfinite(x); }

template <typename A> __device__ __forceinline__ A warp_max(A x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmax(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
template <typename A> __device__ __forceinline__ A warp_sum(A x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

__device__ __forceinline__ u64 attn_row(const AttnRows& r, u64 b, u64 h, u64 i) {
    return r.off + b * r.s0 + h * r.s1 + i * r.s2;
}

// Whether causal masking or the window hides key j from the query at position pos.
__device__ __forceinline__ bool attn_hidden(const AttnArgs& a, i64 pos, i64 j) {
    if (a.causal && j > pos) return true;
    if (a.window > 0) {
        i64 d = pos - j;
        if (d < 0) d = -d;
        if (d >= a.window) return true;
    }
    return false;
}

// Keys [lo, hi) visible to some query with position in [p0, p1] (lo ≥ hi: none).
__device__ __forceinline__ void attn_visible(const AttnArgs& a, i64 p0, i64 p1, i64& lo, i64& hi) {
    lo = 0;
    hi = (i64)a.LK;
    if (a.causal) hi = min(hi, p1 + 1);
    if (a.window > 0) {
        lo = max(lo, p0 - a.window + 1);
        hi = min(hi, p1 + a.window);
    }
    lo = max((i64)0, min(lo, (i64)a.LK));
    hi = max(lo, min(hi, (i64)a.LK));
}

// Query rows [lo, hi) that see some key in [j0, j1).
__device__ __forceinline__ void attn_rows_seeing(const AttnArgs& a, i64 j0, i64 j1, i64& lo, i64& hi) {
    const i64 shift = (i64)a.LK - (i64)a.LQ;
    i64 pmin = -((i64)1 << 62), pmax = ((i64)1 << 62);
    if (a.causal) pmin = max(pmin, j0);
    if (a.window > 0) {
        pmin = max(pmin, j0 - a.window + 1);
        pmax = min(pmax, j1 - 1 + a.window - 1);
    }
    lo = max((i64)0, min(pmin - shift, (i64)a.LQ));
    hi = max(lo, min(pmax - shift + 1, (i64)a.LQ));
}

// ALiBi and bias terms of score s (not masking).
template <typename T, typename A>
__device__ __forceinline__ A attn_extra(const AttnArgs& a, A s, u64 b, u64 h, u64 i, i64 pos, i64 j, A slope) {
    if (a.alibi) s += slope * ((A)j - (A)pos);
    if (a.bias) s += ld<T>(((const T*)a.bias)[a.boff + b * a.bs0 + h * a.bs1 + i * a.bs2 + (u64)j * a.bs3]);
    return s;
}

// Split `z` of `nsplit` of the key range [lo, hi), in whole tiles of `tile` keys.
__device__ __forceinline__ void attn_split(i64 lo, i64 hi, u64 tile, u64 nsplit, u64 z, i64& j0, i64& j1) {
    const i64 nt = (hi - lo + (i64)tile - 1) / (i64)tile;
    const i64 per = (nt + (i64)nsplit - 1) / (i64)nsplit;
    const i64 t0 = min(nt, per * (i64)z), t1 = min(nt, per * (i64)(z + 1));
    j0 = lo + t0 * (i64)tile;
    j1 = min(hi, lo + t1 * (i64)tile);
    if (j1 < j0) j1 = j0;
}

// Store one finished row (or its partial state when the keys are split).
template <typename T, typename A>
__device__ __forceinline__ void attn_store_row(const AttnArgs& a, u64 bh, u64 i, u64 z, A m, A l,
                                               const A* acc, u32 lane, A alpha_scale) {
    const u64 DV = a.DV;
    const u64 rows = a.B * a.HQ * a.LQ;
    const u64 row = bh * a.LQ + i;
    if (a.nsplit > 1) {
        A* po = (A*)a.part;
        A* pm = po + a.nsplit * rows * DV;
        A* pl = pm + a.nsplit * rows;
        for (u32 c = lane; c < DV; c += 32) po[(z * rows + row) * DV + c] = acc[c] * alpha_scale;
        if (lane == 0) {
            pm[z * rows + row] = m;
            pl[z * rows + row] = l;
        }
        return;
    }
    T* o = (T*)a.o;
    T* lse = (T*)a.lse;
    if (m == attn_neg_inf<A>()) {
        for (u32 c = lane; c < DV; c += 32) o[row * DV + c] = st<T>((A)0);
        if (lane == 0) lse[row] = st<T>(attn_neg_inf<A>());
    } else {
        const A inv = (A)1 / l;
        for (u32 c = lane; c < DV; c += 32) o[row * DV + c] = st<T>(acc[c] * alpha_scale * inv);
        if (lane == 0) lse[row] = st<T>(m + attn_log(l));
    }
}

// ---- SIMT forward ----------------------------------------------------------------------
// Block (NT threads, NT a multiple of BK): R = a.rb of the G·Lq rows (query head of the
// group, query) of kv head b·Hkv + hk, so each K/V tile is read once for the whole GQA group;
// blockIdx.x = (b·Hkv + hk)·⌈G·Lq/R⌉ + row block, blockIdx.z = key split. Keys in tiles of
// BK = a.bk (64 or 32); R ≤ 8·NT/BK. Shared (compute type): q rows [R][D] (scaled), K tile
// [BK][D+1], V tile [BK][DV], scores then probabilities [R][BK], output accumulators [R][DV],
// per row m, l, alpha, ALiBi slope, and (as u32) head and query index.
template <typename T>
__device__ void attn_fwd_simt(const AttnArgs& a) {
    typedef typename Compute<T>::type A;
    const u32 NT = blockDim.x, NW = NT >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tid = threadIdx.x;
    const u32 D = (u32)a.D, DV = (u32)a.DV, R = (u32)a.rb, BK = (u32)a.bk;
    A* qs = (A*)attn_smem;
    A* ks = qs + R * D;
    A* vs = ks + BK * (D + 1);
    A* ss = vs + BK * DV;
    A* os = ss + R * BK;
    A* ms = os + R * DV;
    A* ls = ms + R;
    A* al = ls + R;
    A* sl = al + R;
    u32* rh = (u32*)(sl + R);
    u32* ri = rh + R;
    const u64 rows_h = a.G * a.LQ;
    const u64 nrb = (rows_h + R - 1) / R;
    const u64 bkv = blockIdx.x / nrb, b = bkv / a.HKV, hk = bkv % a.HKV;
    const u64 x0 = (nrb - 1 - blockIdx.x % nrb) * R;
    const u32 nr = (u32)min((u64)R, rows_h - x0);
    const u64 xl = x0 + nr - 1;
    i64 imin = (i64)(x0 % a.LQ), imax = (i64)(xl % a.LQ);
    if (x0 / a.LQ != xl / a.LQ) {
        imin = 0;
        imax = (i64)a.LQ - 1;
    }
    const i64 shift = (i64)a.LK - (i64)a.LQ;
    i64 lo, hi, jb, je;
    attn_visible(a, shift + imin, shift + imax, lo, hi);
    attn_split(lo, hi, BK, a.nsplit, blockIdx.z, jb, je);
    const T* q = (const T*)a.q;
    const T* k = (const T*)a.k;
    const T* v = (const T*)a.v;
    const A scale = (A)a.scale;
    for (u32 r = warp; r < R; r += NW) {
        const bool ok = r < nr;
        const u64 x = x0 + r, h = ok ? hk * a.G + x / a.LQ : 0, i = ok ? x % a.LQ : 0;
        const u64 qo = ok ? attn_row(a.qr, b, h, i) : 0;
        for (u32 c = lane; c < D; c += 32) qs[r * D + c] = ok ? ld<T>(q[qo + c]) * scale : (A)0;
        for (u32 c = lane; c < DV; c += 32) os[r * DV + c] = 0;
        if (lane == 0) {
            ms[r] = attn_neg_inf<A>();
            ls[r] = 0;
            sl[r] = (ok && a.alibi) ? ld<T>(((const T*)a.alibi)[h]) : (A)0;
            rh[r] = (u32)h;
            ri[r] = (u32)i;
        }
    }
    // Score phase roles: key jj of the tile, rows rg, rg + step, ... (up to 8).
    const u32 jj = tid % BK, rg = tid / BK, step = NT / BK;
    for (i64 j0 = jb; j0 < je; j0 += BK) {
        const u32 nk = (u32)min((i64)BK, je - j0);
        __syncthreads();
        for (u32 r = warp; r < nk; r += NW) {
            const u64 ko = attn_row(a.kr, b, hk, (u64)j0 + r), vo = attn_row(a.vr, b, hk, (u64)j0 + r);
            for (u32 c = lane; c < D; c += 32) ks[r * (D + 1) + c] = ld<T>(k[ko + c]);
            for (u32 c = lane; c < DV; c += 32) vs[r * DV + c] = ld<T>(v[vo + c]);
        }
        __syncthreads();
        {
            A acc[8];
#pragma unroll
            for (int u = 0; u < 8; ++u) acc[u] = 0;
            const A* kr = ks + jj * (D + 1);
            for (u32 c = 0; c < D; ++c) {
                const A kc = kr[c];
#pragma unroll
                for (int u = 0; u < 8; ++u) {
                    const u32 r = rg + step * u;
                    if (r < nr) acc[u] += qs[r * D + c] * kc;
                }
            }
#pragma unroll
            for (int u = 0; u < 8; ++u) {
                const u32 r = rg + step * u;
                if (r < R) {
                    A s = attn_neg_inf<A>();
                    const i64 j = j0 + jj;
                    if (r < nr && jj < nk) {
                        const i64 pos = shift + (i64)ri[r];
                        if (!attn_hidden(a, pos, j)) s = attn_extra<T, A>(a, acc[u], b, rh[r], ri[r], pos, j, sl[r]);
                    }
                    ss[r * BK + jj] = s;
                }
            }
        }
        __syncthreads();
        // Online softmax, one warp per row (BK is 32 or 64).
        for (u32 r = warp; r < R; r += NW) {
            const bool two = lane + 32 < BK;
            const A s0 = ss[r * BK + lane];
            const A s1 = two ? ss[r * BK + lane + 32] : attn_neg_inf<A>();
            const A m = ms[r];
            const A mn = fmax(m, warp_max(fmax(s0, s1)));
            const A sh = (mn == attn_neg_inf<A>()) ? (A)0 : mn;
            const A alpha = attn_exp(m - sh);
            const A p0 = attn_exp(s0 - sh), p1 = attn_exp(s1 - sh);
            ss[r * BK + lane] = p0;
            if (two) ss[r * BK + lane + 32] = p1;
            const A sum = warp_sum(p0 + p1);
            if (lane == 0) {
                ms[r] = mn;
                ls[r] = ls[r] * alpha + sum;
                al[r] = alpha;
            }
        }
        __syncthreads();
        for (u32 e = tid; e < R * DV; e += NT) {
            const u32 r = e / DV, c = e - r * DV;
            A acc = os[e] * al[r];
            const A* pr = ss + r * BK;
            for (u32 t = 0; t < nk; ++t) acc += pr[t] * vs[t * DV + c];
            os[e] = acc;
        }
    }
    __syncthreads();
    for (u32 r = warp; r < nr; r += NW)
        attn_store_row<T, A>(a, b * a.HQ + rh[r], ri[r], blockIdx.z, ms[r], ls[r], os + r * DV, lane, (A)1);
}

// Merge the key splits: one warp per row (b, h, i).
template <typename T>
__device__ void attn_combine(const AttnArgs& a) {
    typedef typename Compute<T>::type A;
    const u32 NW = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u64 rows = a.B * a.HQ * a.LQ, DV = a.DV, NS = a.nsplit;
    const u64 row = (u64)blockIdx.x * NW + warp;
    if (row >= rows) return;
    const A* po = (const A*)a.part;
    const A* pm = po + NS * rows * DV;
    const A* pl = pm + NS * rows;
    T* o = (T*)a.o;
    T* lse = (T*)a.lse;
    A mx = attn_neg_inf<A>();
    for (u64 z = 0; z < NS; ++z) mx = fmax(mx, pm[z * rows + row]);
    if (mx == attn_neg_inf<A>()) {
        for (u32 c = lane; c < DV; c += 32) o[row * DV + c] = st<T>((A)0);
        if (lane == 0) lse[row] = st<T>(mx);
        return;
    }
    A l = 0;
    for (u64 z = 0; z < NS; ++z) {
        const A mz = pm[z * rows + row];
        if (mz != attn_neg_inf<A>()) l += pl[z * rows + row] * attn_exp(mz - mx);
    }
    const A inv = (A)1 / l;
    for (u32 c = lane; c < DV; c += 32) {
        A acc = 0;
        for (u64 z = 0; z < NS; ++z) {
            const A mz = pm[z * rows + row];
            if (mz != attn_neg_inf<A>()) acc += po[(z * rows + row) * DV + c] * attn_exp(mz - mx);
        }
        o[row * DV + c] = st<T>(acc * inv);
    }
    if (lane == 0) lse[row] = st<T>(mx + attn_log(l));
}

// ---- backward ----------------------------------------------------------------------------
// delta[row] = Σ dO ∘ O, in the compute type; one warp per row.
template <typename T>
__device__ void attn_bwd_pre(const AttnArgs& a) {
    typedef typename Compute<T>::type A;
    const u32 NW = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u64 rows = a.B * a.HQ * a.LQ;
    const u64 row = (u64)blockIdx.x * NW + warp;
    if (row >= rows) return;
    const u64 i = row % a.LQ, bh = row / a.LQ, h = bh % a.HQ, b = bh / a.HQ;
    const T* o = (const T*)a.o;
    const T* go = (const T*)a.dout;
    const u64 oo = attn_row(a.orr, b, h, i), gg = attn_row(a.dor, b, h, i);
    A acc = 0;
    for (u64 c = lane; c < a.DV; c += 32) acc += ld<T>(go[gg + c]) * ld<T>(o[oo + c]);
    acc = warp_sum(acc);
    if (lane == 0) ((A*)a.delta)[row] = acc;
}

// The saved log-sum-exp, non-finite values (fully masked rows) read as 0.
template <typename T>
__device__ __forceinline__ typename Compute<T>::type attn_lse_at(const AttnArgs& a, u64 row) {
    typedef typename Compute<T>::type A;
    const A x = ld<T>(((const T*)a.lse)[row]);
    return attn_finite(x) ? x : (A)0;
}

// dK, dV of 32 keys of kv head b·Hkv + hk (blockIdx.x = (b·Hkv + hk)·⌈Lk/32⌉ + key tile),
// looping over the query
// rows of every head of the group that see them; 8 warps, each owning keys warp, warp+8, ...
// Shared (compute type): K [32][D], V [32][DV], dK [32][D], dV [32][DV], q tile [32][D+1],
// dO tile [32][DV+1], lse [32], delta [32], p and dS per warp [NW][32] each.
template <typename T>
__device__ void attn_bwd_dkdv_simt(const AttnArgs& a) {
    typedef typename Compute<T>::type A;
    const u32 NW = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 D = (u32)a.D, DV = (u32)a.DV;
    A* ks = (A*)attn_smem;
    A* vs = ks + 32 * D;
    A* dks = vs + 32 * DV;
    A* dvs = dks + 32 * D;
    A* qs = dvs + 32 * DV;
    A* dos = qs + 32 * (D + 1);
    A* lses = dos + 32 * (DV + 1);
    A* dels = lses + 32;
    A* pw = dels + 32;
    A* dsw = pw + NW * 32;
    const u64 nkt = (a.LK + 31) / 32;
    const u64 bk = blockIdx.x / nkt, b = bk / a.HKV, hk = bk % a.HKV;
    const i64 j0 = (i64)(blockIdx.x % nkt) * 32;
    const u32 nk = (u32)min((i64)32, (i64)a.LK - j0);
    const T* q = (const T*)a.q;
    const T* k = (const T*)a.k;
    const T* v = (const T*)a.v;
    const T* go = (const T*)a.dout;
    const A scale = (A)a.scale;
    const i64 shift = (i64)a.LK - (i64)a.LQ;
    for (u32 r = warp; r < 32; r += NW) {
        const u64 ko = attn_row(a.kr, b, hk, j0 + r), vo = attn_row(a.vr, b, hk, j0 + r);
        for (u32 c = lane; c < D; c += 32) {
            ks[r * D + c] = r < nk ? ld<T>(k[ko + c]) : (A)0;
            dks[r * D + c] = 0;
        }
        for (u32 c = lane; c < DV; c += 32) {
            vs[r * DV + c] = r < nk ? ld<T>(v[vo + c]) : (A)0;
            dvs[r * DV + c] = 0;
        }
    }
    i64 ilo, ihi;
    attn_rows_seeing(a, j0, j0 + nk, ilo, ihi);
    for (u64 hh = 0; hh < a.G; ++hh) {
        const u64 h = hk * a.G + hh, bh = b * a.HQ + h;
        const A slope = a.alibi ? ld<T>(((const T*)a.alibi)[h]) : (A)0;
        for (i64 r0 = ilo; r0 < ihi; r0 += 32) {
            const u32 nr = (u32)min((i64)32, ihi - r0);
            __syncthreads();
            for (u32 r = warp; r < nr; r += NW) {
                const u64 qo = attn_row(a.qr, b, h, r0 + r), gg = attn_row(a.dor, b, h, r0 + r);
                for (u32 c = lane; c < D; c += 32) qs[r * (D + 1) + c] = ld<T>(q[qo + c]) * scale;
                for (u32 c = lane; c < DV; c += 32) dos[r * (DV + 1) + c] = ld<T>(go[gg + c]);
            }
            if (threadIdx.x < nr) {
                lses[threadIdx.x] = attn_lse_at<T>(a, bh * a.LQ + r0 + threadIdx.x);
                dels[threadIdx.x] = ((const A*)a.delta)[bh * a.LQ + r0 + threadIdx.x];
            }
            __syncthreads();
            for (u32 kk = warp; kk < nk; kk += NW) {
                const i64 j = j0 + kk;
                const i64 i = r0 + lane, pos = shift + i;
                A p = 0, ds = 0;
                if (lane < nr && !attn_hidden(a, pos, j)) {
                    const A* qr = qs + lane * (D + 1);
                    const A* kr = ks + kk * D;
                    A s = 0;
                    for (u32 c = 0; c < D; ++c) s += qr[c] * kr[c];
                    s = attn_extra<T, A>(a, s, b, h, (u64)i, pos, j, slope);
                    p = attn_exp(s - lses[lane]);
                    const A* dr = dos + lane * (DV + 1);
                    const A* vr = vs + kk * DV;
                    A dp = 0;
                    for (u32 c = 0; c < DV; ++c) dp += dr[c] * vr[c];
                    ds = p * (dp - dels[lane]);
                }
                pw[warp * 32 + lane] = p;
                dsw[warp * 32 + lane] = ds;
                __syncwarp();
                for (u32 c = lane; c < D; c += 32) {
                    A acc = dks[kk * D + c];
                    for (u32 r = 0; r < nr; ++r) acc += dsw[warp * 32 + r] * qs[r * (D + 1) + c];
                    dks[kk * D + c] = acc;
                }
                for (u32 c = lane; c < DV; c += 32) {
                    A acc = dvs[kk * DV + c];
                    for (u32 r = 0; r < nr; ++r) acc += pw[warp * 32 + r] * dos[r * (DV + 1) + c];
                    dvs[kk * DV + c] = acc;
                }
                __syncwarp();
            }
        }
    }
    __syncthreads();
    T* dk = (T*)a.dk;
    T* dv = (T*)a.dv;
    const u64 base = (b * a.HKV + hk) * a.LK + (u64)j0;
    for (u32 e = threadIdx.x; e < nk * D; e += blockDim.x) dk[base * D + e] = st<T>(dks[e]);
    for (u32 e = threadIdx.x; e < nk * DV; e += blockDim.x) dv[base * DV + e] = st<T>(dvs[e]);
}

// dQ of NW query rows (one per warp) of head b·Hq + h (grid as the forward), looping over
// key tiles.
// Shared (compute type): q rows [NW][D], dO rows [NW][DV], dQ rows [NW][D], K tile [32][D+1],
// V tile [32][DV+1], dS per warp [NW][32].
template <typename T>
__device__ void attn_bwd_dq_simt(const AttnArgs& a) {
    typedef typename Compute<T>::type A;
    const u32 NW = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 D = (u32)a.D, DV = (u32)a.DV;
    A* qs = (A*)attn_smem;
    A* dos = qs + NW * D;
    A* dqs = dos + NW * DV;
    A* ks = dqs + NW * D;
    A* vs = ks + 32 * (D + 1);
    A* dsw = vs + 32 * (DV + 1);
    const u64 nqb = (a.LQ + NW - 1) / NW;
    const u64 bh = blockIdx.x / nqb, b = bh / a.HQ, h = bh % a.HQ, hk = h / a.G;
    const u64 i0 = (nqb - 1 - blockIdx.x % nqb) * NW, i = i0 + warp;
    const bool valid = i < a.LQ;
    const i64 shift = (i64)a.LK - (i64)a.LQ;
    const i64 pos = shift + (i64)i;
    const u64 ilast = min(i0 + NW, a.LQ) - 1;
    i64 lo, hi;
    attn_visible(a, shift + (i64)i0, shift + (i64)ilast, lo, hi);
    const T* q = (const T*)a.q;
    const T* k = (const T*)a.k;
    const T* v = (const T*)a.v;
    const T* go = (const T*)a.dout;
    const A scale = (A)a.scale;
    A* qrow = qs + warp * D;
    A* drow = dos + warp * DV;
    A* dqrow = dqs + warp * D;
    A* dsrow = dsw + warp * 32;
    A lse = 0, del = 0, slope = 0;
    if (valid) {
        const u64 qo = attn_row(a.qr, b, h, i), go_ = attn_row(a.dor, b, h, i);
        for (u32 c = lane; c < D; c += 32) qrow[c] = ld<T>(q[qo + c]) * scale;
        for (u32 c = lane; c < DV; c += 32) drow[c] = ld<T>(go[go_ + c]);
        lse = attn_lse_at<T>(a, bh * a.LQ + i);
        del = ((const A*)a.delta)[bh * a.LQ + i];
        if (a.alibi) slope = ld<T>(((const T*)a.alibi)[h]);
    }
    for (u32 c = lane; c < D; c += 32) dqrow[c] = 0;
    for (i64 j0 = lo; j0 < hi; j0 += 32) {
        const u32 nk = (u32)min((i64)32, hi - j0);
        __syncthreads();
        for (u32 r = warp; r < nk; r += NW) {
            const u64 ko = attn_row(a.kr, b, hk, j0 + r), vo = attn_row(a.vr, b, hk, j0 + r);
            for (u32 c = lane; c < D; c += 32) ks[r * (D + 1) + c] = ld<T>(k[ko + c]);
            for (u32 c = lane; c < DV; c += 32) vs[r * (DV + 1) + c] = ld<T>(v[vo + c]);
        }
        __syncthreads();
        if (!valid) continue;
        const i64 j = j0 + lane;
        A ds = 0;
        if (lane < nk && !attn_hidden(a, pos, j)) {
            const A* kr = ks + lane * (D + 1);
            A s = 0;
            for (u32 c = 0; c < D; ++c) s += qrow[c] * kr[c];
            s = attn_extra<T, A>(a, s, b, h, i, pos, j, slope);
            const A p = attn_exp(s - lse);
            const A* vr = vs + lane * (DV + 1);
            A dp = 0;
            for (u32 c = 0; c < DV; ++c) dp += drow[c] * vr[c];
            ds = p * (dp - del);
        }
        dsrow[lane] = ds;
        __syncwarp();
        for (u32 c = lane; c < D; c += 32) {
            A acc = dqrow[c];
            for (u32 jj = 0; jj < nk; ++jj) acc += dsrow[jj] * ks[jj * (D + 1) + c];
            dqrow[c] = acc;
        }
        __syncwarp();
    }
    if (valid) {
        T* dq = (T*)a.dq;
        const u64 row = bh * a.LQ + i;
        for (u32 c = lane; c < D; c += 32) dq[row * D + c] = st<T>(dqrow[c] * scale);
    }
}

#define ATTN_SIMT(T) \
    extern "C" __global__ void attn_fwd_simt_##T(AttnArgs a) { attn_fwd_simt<T>(a); } \
    extern "C" __global__ void attn_combine_##T(AttnArgs a) { attn_combine<T>(a); } \
    extern "C" __global__ void attn_bwd_pre_##T(AttnArgs a) { attn_bwd_pre<T>(a); } \
    extern "C" __global__ void attn_bwd_dkdv_simt_##T(AttnArgs a) { attn_bwd_dkdv_simt<T>(a); } \
    extern "C" __global__ void attn_bwd_dq_simt_##T(AttnArgs a) { attn_bwd_dq_simt<T>(a); }
FOR_FLOATS(ATTN_SIMT)

// ---- tensor cores (f16 / bf16) -------------------------------------------------------------
// Blocks of 4 warps; tiles of 64 query rows × 64 keys; each warp owns 16 rows (forward, dQ)
// or 16 keys (dK/dV). Tiles sit in shared memory with rows padded to D + 8 elements, which
// keeps ldmatrix free of bank conflicts, and arrive by cp.async, double-buffered.
// Fragments of mma.m16n8k16 (g = lane / 4, t = lane % 4): A regs {(g, 2t), (g+8, 2t),
// (g, 2t+8), (g+8, 2t+8)}, B regs {(k 2t, n g), (k 2t+8, n g)}, C {(g, 2t..2t+1), (g+8, ..)}.

#define TC_T 64
#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

// 2^x with denormal results flushed to 0 (probabilities that small do not matter); −inf → 0.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, u32 bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldsm4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm4t(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

template <typename T> struct Mma;
template <> struct Mma<bf16> {
    static __device__ __forceinline__ void run(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    // Two f32 to one register of two bf16 (lo in the low half).
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        u32 r;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
    }
};
template <> struct Mma<f16> {
    static __device__ __forceinline__ void run(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        u32 r;
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
    }
};

// ldmatrix.x4 addresses, lane → (row, col) of a tile with row stride LD (elements):
// A operand at (m0, k0) and the transposed B operand at (k0, n0) share one pattern; the
// plain B operand (stored [n][k]) at (n0, k0) has the other.
template <int LD> __device__ __forceinline__ u32 lda_addr(u32 base, int r0, int c0, int lane) {
    const int mi = lane >> 3, r = lane & 7;
    return base + 2u * (u32)((r0 + r + (mi & 1) * 8) * LD + c0 + (mi >> 1) * 8);
}
template <int LD> __device__ __forceinline__ u32 ldb_addr(u32 base, int n0, int k0, int lane) {
    const int mi = lane >> 3, r = lane & 7;
    return base + 2u * (u32)((n0 + r + (mi >> 1) * 8) * LD + k0 + (mi & 1) * 8);
}

// Copy rows [row0, row0 + 64) of a [B, H, L, D] view (head b, h) to a shared tile, zeros for
// rows ≥ nrows.
template <typename T, int D>
__device__ __forceinline__ void tc_load(T* sm, const T* g, const AttnRows& r, u64 b, u64 h, i64 row0, i64 nrows) {
    constexpr int CH = D / 8, LD = D + 8;
    for (int e = threadIdx.x; e < TC_T * CH; e += blockDim.x) {
        const int rr = e / CH, c = (e - rr * CH) * 8;
        const i64 row = row0 + rr;
        const bool ok = row >= 0 && row < nrows;
        const T* src = ok ? g + attn_row(r, b, h, (u64)row) + c : g;
        cp_async16(smem_addr(sm + rr * LD + c), src, ok ? 16u : 0u);
    }
}

// Whether every key of [j0, j1] is visible to every query with position in [p0, p1].
__device__ __forceinline__ bool attn_all_visible(const AttnArgs& a, i64 p0, i64 p1, i64 j0, i64 j1) {
    if (a.causal && j1 > p0) return false;
    if (a.window > 0 && (p1 - j0 >= a.window || j1 - p0 >= a.window)) return false;
    return true;
}

// Score in log2 units of query row i (< LQ) and key j (< LK), from the raw product s, with
// ALiBi, bias and masks (−inf when hidden).
template <typename T>
__device__ __forceinline__ float tc_score(const AttnArgs& a, float s, float scale, u64 b, u64 h, i64 i, i64 j, float slope) {
    const i64 pos = (i64)a.LK - (i64)a.LQ + i;
    if (attn_hidden(a, pos, j)) return attn_neg_inf<float>();
    float x = s * scale;
    if (a.alibi) x += slope * ((float)j - (float)pos);
    if (a.bias) x += ld<T>(((const T*)a.bias)[a.boff + b * a.bs0 + h * a.bs1 + (u64)i * a.bs2 + (u64)j * a.bs3]);
    return x * LOG2E_F;
}

template <typename T, int D>
__device__ void attn_fwd_tc(const AttnArgs& a) {
    constexpr int LD = D + 8, KS = D / 16, DT = D / 8, NT = TC_T / 8;
    T* qs = (T*)attn_smem;
    T* ks = qs + TC_T * LD;
    T* vs = ks + 2 * TC_T * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 nqb = (a.LQ + TC_T - 1) / TC_T;
    const u64 bh = blockIdx.x / nqb, b = bh / a.HQ, h = bh % a.HQ, hk = h / a.G;
    const i64 i0 = (i64)(nqb - 1 - blockIdx.x % nqb) * TC_T;  // heaviest (causal) blocks first
    const i64 shift = (i64)a.LK - (i64)a.LQ;
    const i64 ilast = min(i0 + TC_T, (i64)a.LQ) - 1;
    i64 lo, hi, jb, je;
    attn_visible(a, shift + i0, shift + ilast, lo, hi);
    attn_split(lo, hi, TC_T, a.nsplit, blockIdx.z, jb, je);
    const T* q = (const T*)a.q;
    const T* k = (const T*)a.k;
    const T* v = (const T*)a.v;
    tc_load<T, D>(qs, q, a.qr, b, h, i0, (i64)a.LQ);
    const int ntile = (int)((je - jb + TC_T - 1) / TC_T);
    if (ntile > 0) {
        tc_load<T, D>(ks, k, a.kr, b, hk, jb, (i64)a.LK);
        tc_load<T, D>(vs, v, a.vr, b, hk, jb, (i64)a.LK);
    }
    cp_async_commit();
    const float scale = (float)a.scale, sl2 = scale * LOG2E_F;
    const float slope = a.alibi ? ld<T>(((const T*)a.alibi)[h]) : 0.f;
    const bool extras = a.alibi || a.bias;
    float o[DT][4];
#pragma unroll
    for (int n = 0; n < DT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {attn_neg_inf<float>(), attn_neg_inf<float>()}, l[2] = {0.f, 0.f};
    u32 qf[KS][4];
    const u32 qa = smem_addr(qs), ka0 = smem_addr(ks), va0 = smem_addr(vs);
    for (int it = 0; it < ntile; ++it) {
        const i64 j0 = jb + (i64)it * TC_T;
        if (it + 1 < ntile) {
            tc_load<T, D>(ks + ((it + 1) & 1) * TC_T * LD, k, a.kr, b, hk, j0 + TC_T, (i64)a.LK);
            tc_load<T, D>(vs + ((it + 1) & 1) * TC_T * LD, v, a.vr, b, hk, j0 + TC_T, (i64)a.LK);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (it == 0) {
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) ldsm4(qf[kk], lda_addr<LD>(qa, warp * 16, kk * 16, lane));
        }
        const u32 ka = ka0 + 2u * (u32)((it & 1) * TC_T * LD), va = va0 + 2u * (u32)((it & 1) * TC_T * LD);
        float s[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                u32 bb[4];
                ldsm4(bb, ldb_addr<LD>(ka, np * 16, kk * 16, lane));
                Mma<T>::run(s[2 * np], qf[kk], bb[0], bb[1]);
                Mma<T>::run(s[2 * np + 1], qf[kk], bb[2], bb[3]);
            }
        }
        const bool plain = !extras && j0 + TC_T <= je && attn_all_visible(a, shift + i0, shift + ilast, j0, j0 + TC_T - 1);
        // (The branch stays outside the unrolled loops: the masked path is long, and the
        // plain path must stay compact for the instruction cache.)
        if (plain) {
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[n][e] *= sl2;
        } else {
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const i64 i = i0 + warp * 16 + g + (e >> 1) * 8;
                    const i64 j = j0 + n * 8 + 2 * t + (e & 1);
                    s[n][e] = (i < (i64)a.LQ && j < je) ? tc_score<T>(a, s[n][e], scale, b, h, i, j, slope)
                                                        : attn_neg_inf<float>();
                }
            }
        }
        // Online softmax of the two rows this thread holds (row max over the quad).
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            float mx = attn_neg_inf<float>();
#pragma unroll
            for (int n = 0; n < NT; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * hf], s[n][2 * hf + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mn = fmaxf(m[hf], mx);
            const float sh = (mn == attn_neg_inf<float>()) ? 0.f : mn;
            const float alpha = fast_exp2(m[hf] - sh);
            m[hf] = mn;
            float sum = 0.f;
#pragma unroll
            for (int n = 0; n < NT; ++n) {
                s[n][2 * hf] = fast_exp2(s[n][2 * hf] - sh);
                s[n][2 * hf + 1] = fast_exp2(s[n][2 * hf + 1] - sh);
                sum += s[n][2 * hf] + s[n][2 * hf + 1];
            }
            l[hf] = l[hf] * alpha + sum;
#pragma unroll
            for (int n = 0; n < DT; ++n) {
                o[n][2 * hf] *= alpha;
                o[n][2 * hf + 1] *= alpha;
            }
        }
        // O += P · V
#pragma unroll
        for (int kk = 0; kk < TC_T / 16; ++kk) {
            u32 pa[4];
            pa[0] = Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < DT / 2; ++dp) {
                u32 bb[4];
                ldsm4t(bb, lda_addr<LD>(va, kk * 16, dp * 16, lane));
                Mma<T>::run(o[2 * dp], pa, bb[0], bb[1]);
                Mma<T>::run(o[2 * dp + 1], pa, bb[2], bb[3]);
            }
        }
        __syncthreads();
    }
    cp_async_wait<0>();
    // Finish: row sums over the quad, then normalise (or store the partial state).
    const u64 rows = a.B * a.HQ * a.LQ;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        float lt = l[hf];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        const i64 i = i0 + warp * 16 + g + hf * 8;
        if (i >= (i64)a.LQ) continue;
        const u64 row = bh * a.LQ + (u64)i;
        const bool dead = m[hf] == attn_neg_inf<float>();
        const float mnat = dead ? m[hf] : m[hf] * LN2_F;
        if (a.nsplit > 1) {
            float* po = (float*)a.part;
            float* pm = po + a.nsplit * rows * D;
            float* pl = pm + a.nsplit * rows;
            const u64 prow = blockIdx.z * rows + row;
#pragma unroll
            for (int n = 0; n < DT; ++n) {
                po[prow * D + n * 8 + 2 * t] = o[n][2 * hf];
                po[prow * D + n * 8 + 2 * t + 1] = o[n][2 * hf + 1];
            }
            if (t == 0) {
                pm[prow] = mnat;
                pl[prow] = lt;
            }
        } else {
            T* out = (T*)a.o;
            const float inv = dead ? 0.f : 1.f / lt;
#pragma unroll
            for (int n = 0; n < DT; ++n) {
                out[row * D + n * 8 + 2 * t] = st<T>(o[n][2 * hf] * inv);
                out[row * D + n * 8 + 2 * t + 1] = st<T>(o[n][2 * hf + 1] * inv);
            }
            if (t == 0) ((T*)a.lse)[row] = st<T>(dead ? mnat : mnat + logf(lt));
        }
    }
}

// The saved log-sum-exp in log2 units (non-finite: 0).
template <typename T> __device__ __forceinline__ float tc_lse2(const AttnArgs& a, u64 row) {
    const float x = ld<T>(((const T*)a.lse)[row]);
    return isfinite(x) ? x * LOG2E_F : 0.f;
}

// dK, dV of 64 keys of kv head b·Hkv + hk (blockIdx.x = (b·Hkv + hk)·⌈Lk/64⌉ + key tile),
// looping over (query head of the group, query tile); warp w owns keys 16w..16w+15.
// Shared: K, V tiles, Q and dO tiles ×2, lse (log2) and delta ×2 (f32).
template <typename T, int D>
__device__ void attn_bwd_dkdv_tc(const AttnArgs& a) {
    constexpr int LD = D + 8, KS = D / 16, DT = D / 8, NT = TC_T / 8;
    T* ks = (T*)attn_smem;
    T* vs = ks + TC_T * LD;
    T* qs = vs + TC_T * LD;
    T* dos = qs + 2 * TC_T * LD;
    float* lse_s = (float*)(dos + 2 * TC_T * LD);
    float* del_s = lse_s + 2 * TC_T;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 nkt = (a.LK + TC_T - 1) / TC_T;
    const u64 bk = blockIdx.x / nkt, b = bk / a.HKV, hk = bk % a.HKV;
    const i64 j0 = (i64)(blockIdx.x % nkt) * TC_T;
    const i64 shift = (i64)a.LK - (i64)a.LQ;
    const i64 jl = min(j0 + TC_T, (i64)a.LK) - 1;
    const T* q = (const T*)a.q;
    const T* go = (const T*)a.dout;
    tc_load<T, D>(ks, (const T*)a.k, a.kr, b, hk, j0, (i64)a.LK);
    tc_load<T, D>(vs, (const T*)a.v, a.vr, b, hk, j0, (i64)a.LK);
    i64 ilo, ihi;
    attn_rows_seeing(a, j0, jl + 1, ilo, ihi);
    const int nqt = (int)((ihi - ilo + TC_T - 1) / TC_T);
    const int niter = nqt * (int)a.G;
    // Queue the Q/dO tiles (cp.async) and lse/delta (plain stores) of iteration `it`.
    auto fetch = [&](int it) {
        const int buf = it & 1;
        const u64 h = hk * a.G + (u64)(it / nqt);
        const i64 r0 = ilo + (i64)(it % nqt) * TC_T;
        tc_load<T, D>(qs + buf * TC_T * LD, q, a.qr, b, h, r0, (i64)a.LQ);
        tc_load<T, D>(dos + buf * TC_T * LD, go, a.dor, b, h, r0, (i64)a.LQ);
        for (int r = threadIdx.x; r < TC_T; r += blockDim.x) {
            const i64 i = r0 + r;
            const bool ok = i < (i64)a.LQ;
            const u64 row = (b * a.HQ + h) * a.LQ + (u64)i;
            lse_s[buf * TC_T + r] = ok ? tc_lse2<T>(a, row) : 0.f;
            del_s[buf * TC_T + r] = ok ? ((const float*)a.delta)[row] : 0.f;
        }
    };
    if (niter > 0) fetch(0);
    cp_async_commit();
    const float scale = (float)a.scale, sl2 = scale * LOG2E_F;
    const bool extras = a.alibi || a.bias;
    float dk[DT][4], dv[DT][4];
#pragma unroll
    for (int n = 0; n < DT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;
    const u32 ka = smem_addr(ks), va = smem_addr(vs), qa0 = smem_addr(qs), da0 = smem_addr(dos);
    for (int it = 0; it < niter; ++it) {
        if (it + 1 < niter) {
            fetch(it + 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const int buf = it & 1;
        const u64 h = hk * a.G + (u64)(it / nqt);
        const i64 r0 = ilo + (i64)(it % nqt) * TC_T;
        const u32 qa = qa0 + 2u * (u32)(buf * TC_T * LD), da = da0 + 2u * (u32)(buf * TC_T * LD);
        const float* lse2 = lse_s + buf * TC_T;
        const float* del = del_s + buf * TC_T;
        const float slope = a.alibi ? ld<T>(((const T*)a.alibi)[h]) : 0.f;
        // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ: 16 keys × 64 queries per warp.
        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
            u32 kf[4], vf[4];
            ldsm4(kf, lda_addr<LD>(ka, warp * 16, kk * 16, lane));
            ldsm4(vf, lda_addr<LD>(va, warp * 16, kk * 16, lane));
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                u32 bb[4];
                ldsm4(bb, ldb_addr<LD>(qa, np * 16, kk * 16, lane));
                Mma<T>::run(s[2 * np], kf, bb[0], bb[1]);
                Mma<T>::run(s[2 * np + 1], kf, bb[2], bb[3]);
                ldsm4(bb, ldb_addr<LD>(da, np * 16, kk * 16, lane));
                Mma<T>::run(dp[2 * np], vf, bb[0], bb[1]);
                Mma<T>::run(dp[2 * np + 1], vf, bb[2], bb[3]);
            }
        }
        const bool plain = !extras && r0 + TC_T <= (i64)a.LQ && j0 + TC_T <= (i64)a.LK &&
                           attn_all_visible(a, shift + r0, shift + r0 + TC_T - 1, j0, j0 + TC_T - 1);
        // Pᵀ = exp2(S·scale·log2e − lse2), dSᵀ = Pᵀ ∘ (dPᵀ − delta).
        if (plain) {
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int qc = n * 8 + 2 * t + (e & 1);
                    const float p = fast_exp2(s[n][e] * sl2 - lse2[qc]);
                    s[n][e] = p;
                    dp[n][e] = p * (dp[n][e] - del[qc]);
                }
            }
        } else {
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int qc = n * 8 + 2 * t + (e & 1);
                    const i64 j = j0 + warp * 16 + g + (e >> 1) * 8;
                    const i64 i = r0 + qc;
                    const float x = (i < (i64)a.LQ && j < (i64)a.LK)
                                        ? tc_score<T>(a, s[n][e], scale, b, h, i, j, slope) - lse2[qc]
                                        : attn_neg_inf<float>();
                    const float p = fast_exp2(x);
                    s[n][e] = p;
                    dp[n][e] = p * (dp[n][e] - del[qc]);
                }
            }
        }
        // dV += Pᵀ dO, dK += dSᵀ Q (A from registers, B = dO / Q transposed).
#pragma unroll
        for (int kk = 0; kk < TC_T / 16; ++kk) {
            u32 pa[4], sa[4];
            pa[0] = Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            sa[0] = Mma<T>::pack(dp[2 * kk][0], dp[2 * kk][1]);
            sa[1] = Mma<T>::pack(dp[2 * kk][2], dp[2 * kk][3]);
            sa[2] = Mma<T>::pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
            sa[3] = Mma<T>::pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
            for (int np = 0; np < DT / 2; ++np) {
                u32 bb[4];
                ldsm4t(bb, lda_addr<LD>(da, kk * 16, np * 16, lane));
                Mma<T>::run(dv[2 * np], pa, bb[0], bb[1]);
                Mma<T>::run(dv[2 * np + 1], pa, bb[2], bb[3]);
                ldsm4t(bb, lda_addr<LD>(qa, kk * 16, np * 16, lane));
                Mma<T>::run(dk[2 * np], sa, bb[0], bb[1]);
                Mma<T>::run(dk[2 * np + 1], sa, bb[2], bb[3]);
            }
        }
        __syncthreads();
    }
    cp_async_wait<0>();
    T* dko = (T*)a.dk;
    T* dvo = (T*)a.dv;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const i64 j = j0 + warp * 16 + g + hf * 8;
        if (j >= (i64)a.LK) continue;
        const u64 row = (b * a.HKV + hk) * a.LK + (u64)j;
#pragma unroll
        for (int n = 0; n < DT; ++n) {
            const u64 c = row * D + n * 8 + 2 * t;
            dko[c] = st<T>(dk[n][2 * hf] * scale);
            dko[c + 1] = st<T>(dk[n][2 * hf + 1] * scale);
            dvo[c] = st<T>(dv[n][2 * hf]);
            dvo[c + 1] = st<T>(dv[n][2 * hf + 1]);
        }
    }
}

// dQ of 64 query rows of head b·Hq + h (grid as the forward), looping over key tiles; warp w
// owns rows 16w..16w+15. Shared: Q, dO tiles, K and V tiles ×2.
template <typename T, int D>
__device__ void attn_bwd_dq_tc(const AttnArgs& a) {
    constexpr int LD = D + 8, KS = D / 16, DT = D / 8, NT = TC_T / 8;
    T* qs = (T*)attn_smem;
    T* dos = qs + TC_T * LD;
    T* ks = dos + TC_T * LD;
    T* vs = ks + 2 * TC_T * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 nqb = (a.LQ + TC_T - 1) / TC_T;
    const u64 bh = blockIdx.x / nqb, b = bh / a.HQ, h = bh % a.HQ, hk = h / a.G;
    const i64 i0 = (i64)(nqb - 1 - blockIdx.x % nqb) * TC_T;  // heaviest (causal) blocks first
    const i64 shift = (i64)a.LK - (i64)a.LQ;
    const i64 ilast = min(i0 + TC_T, (i64)a.LQ) - 1;
    i64 lo, hi;
    attn_visible(a, shift + i0, shift + ilast, lo, hi);
    const T* k = (const T*)a.k;
    const T* v = (const T*)a.v;
    tc_load<T, D>(qs, (const T*)a.q, a.qr, b, h, i0, (i64)a.LQ);
    tc_load<T, D>(dos, (const T*)a.dout, a.dor, b, h, i0, (i64)a.LQ);
    const int ntile = (int)((hi - lo + TC_T - 1) / TC_T);
    if (ntile > 0) {
        tc_load<T, D>(ks, k, a.kr, b, hk, lo, (i64)a.LK);
        tc_load<T, D>(vs, v, a.vr, b, hk, lo, (i64)a.LK);
    }
    cp_async_commit();
    const float scale = (float)a.scale, sl2 = scale * LOG2E_F;
    const float slope = a.alibi ? ld<T>(((const T*)a.alibi)[h]) : 0.f;
    const bool extras = a.alibi || a.bias;
    float lse2[2], del[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const i64 i = i0 + warp * 16 + g + hf * 8;
        const bool ok = i < (i64)a.LQ;
        lse2[hf] = ok ? tc_lse2<T>(a, bh * a.LQ + (u64)i) : 0.f;
        del[hf] = ok ? ((const float*)a.delta)[bh * a.LQ + (u64)i] : 0.f;
    }
    float dq[DT][4];
#pragma unroll
    for (int n = 0; n < DT; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;
    const u32 qa = smem_addr(qs), da = smem_addr(dos), ka0 = smem_addr(ks), va0 = smem_addr(vs);
    for (int it = 0; it < ntile; ++it) {
        const i64 j0 = lo + (i64)it * TC_T;
        if (it + 1 < ntile) {
            tc_load<T, D>(ks + ((it + 1) & 1) * TC_T * LD, k, a.kr, b, hk, j0 + TC_T, (i64)a.LK);
            tc_load<T, D>(vs + ((it + 1) & 1) * TC_T * LD, v, a.vr, b, hk, j0 + TC_T, (i64)a.LK);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const u32 ka = ka0 + 2u * (u32)((it & 1) * TC_T * LD), va = va0 + 2u * (u32)((it & 1) * TC_T * LD);
        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
            u32 qf[4], df[4];
            ldsm4(qf, lda_addr<LD>(qa, warp * 16, kk * 16, lane));
            ldsm4(df, lda_addr<LD>(da, warp * 16, kk * 16, lane));
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                u32 bb[4];
                ldsm4(bb, ldb_addr<LD>(ka, np * 16, kk * 16, lane));
                Mma<T>::run(s[2 * np], qf, bb[0], bb[1]);
                Mma<T>::run(s[2 * np + 1], qf, bb[2], bb[3]);
                ldsm4(bb, ldb_addr<LD>(va, np * 16, kk * 16, lane));
                Mma<T>::run(dp[2 * np], df, bb[0], bb[1]);
                Mma<T>::run(dp[2 * np + 1], df, bb[2], bb[3]);
            }
        }
        const bool plain = !extras && j0 + TC_T <= hi && attn_all_visible(a, shift + i0, shift + ilast, j0, j0 + TC_T - 1);
        if (plain) {
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int hf = e >> 1;
                    dp[n][e] = fast_exp2(s[n][e] * sl2 - lse2[hf]) * (dp[n][e] - del[hf]);
                }
            }
        } else {
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int hf = e >> 1;
                    const i64 i = i0 + warp * 16 + g + hf * 8;
                    const i64 j = j0 + n * 8 + 2 * t + (e & 1);
                    const float x = (i < (i64)a.LQ && j < hi)
                                        ? tc_score<T>(a, s[n][e], scale, b, h, i, j, slope) - lse2[hf]
                                        : attn_neg_inf<float>();
                    dp[n][e] = fast_exp2(x) * (dp[n][e] - del[hf]);
                }
            }
        }
        // dQ += dS K (B = K transposed: k = key, n = d).
#pragma unroll
        for (int kk = 0; kk < TC_T / 16; ++kk) {
            u32 sa[4];
            sa[0] = Mma<T>::pack(dp[2 * kk][0], dp[2 * kk][1]);
            sa[1] = Mma<T>::pack(dp[2 * kk][2], dp[2 * kk][3]);
            sa[2] = Mma<T>::pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
            sa[3] = Mma<T>::pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
            for (int np = 0; np < DT / 2; ++np) {
                u32 bb[4];
                ldsm4t(bb, lda_addr<LD>(ka, kk * 16, np * 16, lane));
                Mma<T>::run(dq[2 * np], sa, bb[0], bb[1]);
                Mma<T>::run(dq[2 * np + 1], sa, bb[2], bb[3]);
            }
        }
        __syncthreads();
    }
    cp_async_wait<0>();
    T* dqo = (T*)a.dq;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const i64 i = i0 + warp * 16 + g + hf * 8;
        if (i >= (i64)a.LQ) continue;
        const u64 row = bh * a.LQ + (u64)i;
#pragma unroll
        for (int n = 0; n < DT; ++n) {
            dqo[row * D + n * 8 + 2 * t] = st<T>(dq[n][2 * hf] * scale);
            dqo[row * D + n * 8 + 2 * t + 1] = st<T>(dq[n][2 * hf + 1] * scale);
        }
    }
}

#define ATTN_TC(T, D) \
    extern "C" __global__ void __launch_bounds__(128) attn_fwd_tc##D##_##T(AttnArgs a) { attn_fwd_tc<T, D>(a); } \
    extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkdv_tc##D##_##T(AttnArgs a) { attn_bwd_dkdv_tc<T, D>(a); } \
    extern "C" __global__ void __launch_bounds__(128) attn_bwd_dq_tc##D##_##T(AttnArgs a) { attn_bwd_dq_tc<T, D>(a); }
#define ATTN_TC_DIMS(T) ATTN_TC(T, 32) ATTN_TC(T, 64) ATTN_TC(T, 96) ATTN_TC(T, 128)
ATTN_TC_DIMS(f16)
ATTN_TC_DIMS(bf16)
