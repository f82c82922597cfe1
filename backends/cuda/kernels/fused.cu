// Fused ops: softmax / log-softmax / layer norm / RMS norm over the last dim, RMS-norm
// backward, SwiGLU (silu(gate)·up) forward and backward, softmax cross-entropy forward and
// backward, rotary embeddings, and in-place optimizer updates.
//
// Every op computes in the dtype's compute type (f32 for f16/bf16/f32, f64 for f64) and
// rounds once when it stores. The row kernels (softmax, norms, RMS-norm backward) take
// contiguous rows (the host copies a strided input first); the others read their inputs
// through `Strided` views. Outputs are fresh contiguous buffers, except the optimizer's,
// which update their operands in place.
//
// Row kernels come in three shapes: `_w` gives each row one warp (rows of at most 1024
// elements, several rows per block), `_b` one block (at most 16 elements a thread), both
// keeping the row in registers; `_s` one block streaming the row from memory on each pass.
// Reductions use warp shuffles and, across the warps of a block, shared memory; every thread
// then holds the same result (the xor butterfly adds the same pairs on every lane).

template <typename T> using CT = typename Compute<T>::type;

// ---- math in the compute type ----------------------------------------------------------------
__device__ __forceinline__ float mexp(float v) { return expf(v); }
__device__ __forceinline__ double mexp(double v) { return exp(v); }
__device__ __forceinline__ float mlog(float v) { return logf(v); }
__device__ __forceinline__ double mlog(double v) { return log(v); }
__device__ __forceinline__ float msqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double msqrt(double v) { return sqrt(v); }
__device__ __forceinline__ bool mfinite(float v) { return fabsf(v) <= 3.402823466e38f; }
__device__ __forceinline__ bool mfinite(double v) { return fabs(v) <= 1.7976931348623157e308; }
template <typename C> __device__ __forceinline__ C neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return __longlong_as_double((long long)0xfff0000000000000ULL);
}
// max that propagates NaN (as the reductions of the composite do).
template <typename C> __device__ __forceinline__ C nan_max(C a, C b) {
    return (b > a || b != b) ? b : a;
}

// ---- reductions over a row group (a warp, or the whole block) --------------------------------
template <typename C> __device__ __forceinline__ C warp_sum(C v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename C> __device__ __forceinline__ C warp_max(C v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide combine of one value per warp (already warp-reduced): every thread gets the
// combination of the warps' values in warp order. Needs blockDim.x a multiple of 32.
template <typename C, bool MAX> __device__ __forceinline__ C block_combine(C v) {
    __shared__ C sh[32];
    const u32 lane = threadIdx.x & 31u, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();  // the previous use of `sh` is over
    if (lane == 0) sh[w] = v;
    __syncthreads();
    C t = sh[0];
    for (u32 i = 1; i < nw; ++i) t = MAX ? nan_max(t, sh[i]) : t + sh[i];
    return t;
}
template <bool WARP, typename C> __device__ __forceinline__ C grp_sum(C v) {
    v = warp_sum(v);
    if constexpr (WARP) return v;
    else return block_combine<C, false>(v);
}
template <bool WARP, typename C> __device__ __forceinline__ C grp_max(C v) {
    v = warp_max(v);
    if constexpr (WARP) return v;
    else return block_combine<C, true>(v);
}

// ---- row kernels: softmax, log-softmax, layer norm, RMS norm --------------------------------
#define ROW_SOFTMAX 0
#define ROW_LOG_SOFTMAX 1
#define ROW_LAYER_NORM 2
#define ROW_RMS_NORM 3
#define ROW_HAS_W 1u
#define ROW_HAS_B 2u

// A row group's threads: `lanes` of them, this one is `lane`; rows first, first + step, ...
// Element j of a row belongs to lane j % lanes.
template <bool WARP> struct RowGroup {
    u32 lanes, lane, first, step;
    __device__ __forceinline__ RowGroup() {
        const u32 per = WARP ? (blockDim.x >> 5) : 1u;
        lanes = WARP ? 32u : blockDim.x;
        lane = WARP ? (threadIdx.x & 31u) : threadIdx.x;
        first = WARP ? blockIdx.x * per + (threadIdx.x >> 5) : blockIdx.x;
        step = gridDim.x * per;
    }
};

// With NPL > 0 a thread keeps its (at most NPL) elements of the row in registers: the row is
// read from memory once, with all loads in flight together. NPL == 0 streams the row from
// memory on every pass (rows too long to keep).
template <int NPL, typename T>
__device__ __forceinline__ void row_load(CT<T>* v, const T* xr, u32 d, u32 lane, u32 lanes) {
    if constexpr (NPL > 0) {
#pragma unroll
        for (int k = 0; k < NPL; ++k) {
            const u32 j = lane + (u32)k * lanes;
            v[k] = j < d ? ld<T>(xr[j]) : (CT<T>)0;
        }
    }
}
// f(j, x_j) for this thread's elements of the row.
template <int NPL, typename T, typename F>
__device__ __forceinline__ void row_for(const CT<T>* v, const T* xr, u32 d, u32 lane, u32 lanes,
                                        F f) {
    if constexpr (NPL > 0) {
#pragma unroll
        for (int k = 0; k < NPL; ++k) {
            const u32 j = lane + (u32)k * lanes;
            if (j < d) f(j, v[k]);
        }
    } else {
        for (u32 j = lane; j < d; j += lanes) f(j, ld<T>(xr[j]));
    }
}

// f(j, x_j, g_j) over this thread's elements of two rows kept like `row_for`'s.
template <int NPL, typename T, typename F>
__device__ __forceinline__ void row_for2(const CT<T>* v, const T* xr, const CT<T>* u, const T* gr,
                                         u32 d, u32 lane, u32 lanes, F f) {
    if constexpr (NPL > 0) {
#pragma unroll
        for (int k = 0; k < NPL; ++k) {
            const u32 j = lane + (u32)k * lanes;
            if (j < d) f(j, v[k], u[k]);
        }
    } else {
        for (u32 j = lane; j < d; j += lanes) f(j, ld<T>(xr[j]), ld<T>(gr[j]));
    }
}

// `rows` contiguous rows of `d` elements (the host copies strided inputs first); w and b
// (length d, contiguous) when flags say they are there.
template <typename T, bool WARP, int OP, int NPL>
__device__ __forceinline__ void rows_impl(u32 rows, u32 d, const T* x, const T* w, const T* b,
                                          u32 flags, double eps_d, T* y) {
    typedef CT<T> C;
    const RowGroup<WARP> gr;
    const u32 lane = gr.lane, lanes = gr.lanes;
    const C eps = (C)eps_d;
    const C n = (C)d;
    const bool hw = (flags & ROW_HAS_W) != 0, hb = (flags & ROW_HAS_B) != 0;
    C v[NPL > 0 ? NPL : 1];
    // `r` is the same on every thread of a row group, so the group's reductions stay in step.
    for (u32 r = gr.first; r < rows; r += gr.step) {
        const u32 base = r * d;
        const T* xr = x + base;
        T* yr = y + base;
        row_load<NPL, T>(v, xr, d, lane, lanes);
        if constexpr (OP == ROW_SOFTMAX || OP == ROW_LOG_SOFTMAX) {
            C m = neg_inf<C>();
            row_for<NPL, T>(v, xr, d, lane, lanes, [&](u32, C xv) { m = nan_max(m, xv); });
            m = grp_max<WARP>(m);
            // log-softmax shifts by 0 when the max is infinite (as `logsumexp`); softmax
            // does not (an infinite max gives NaN, as the composite).
            const C shift = (OP == ROW_SOFTMAX || mfinite(m)) ? m : (C)0;
            C s = 0;
            row_for<NPL, T>(v, xr, d, lane, lanes, [&](u32, C xv) { s += mexp(xv - shift); });
            s = grp_sum<WARP>(s);
            if constexpr (OP == ROW_SOFTMAX) {
                row_for<NPL, T>(v, xr, d, lane, lanes,
                                [&](u32 j, C xv) { yr[j] = st<T>(mexp(xv - shift) / s); });
            } else {
                const C lse = mlog(s) + shift;
                row_for<NPL, T>(v, xr, d, lane, lanes,
                                [&](u32 j, C xv) { yr[j] = st<T>(xv - lse); });
            }
        } else if constexpr (OP == ROW_LAYER_NORM) {
            C s = 0;
            row_for<NPL, T>(v, xr, d, lane, lanes, [&](u32, C xv) { s += xv; });
            const C mean = grp_sum<WARP>(s) / n;
            C q = 0;
            row_for<NPL, T>(v, xr, d, lane, lanes, [&](u32, C xv) {
                const C c = xv - mean;
                q += c * c;
            });
            const C rs = (C)1 / msqrt(grp_sum<WARP>(q) / n + eps);
            row_for<NPL, T>(v, xr, d, lane, lanes, [&](u32 j, C xv) {
                C o = (xv - mean) * rs;
                if (hw) o = o * ld<T>(w[j]);
                if (hb) o = o + ld<T>(b[j]);
                yr[j] = st<T>(o);
            });
        } else {
            C q = 0;
            row_for<NPL, T>(v, xr, d, lane, lanes, [&](u32, C xv) { q += xv * xv; });
            const C rs = (C)1 / msqrt(grp_sum<WARP>(q) / n + eps);
            row_for<NPL, T>(v, xr, d, lane, lanes, [&](u32 j, C xv) {
                C o = xv * rs;
                if (hw) o = o * ld<T>(w[j]);
                yr[j] = st<T>(o);
            });
        }
    }
}

// Kernel shapes: `_w` a warp per row, rows ≤ 1024 kept in registers; `_b` a block per row,
// ≤ 16 elements a thread kept in registers; `_s` a block per row, streamed.
#define ROW_ARGS(T) u32 rows, u32 d, const T* x, const T* w, const T* b, u32 flags, double eps, T* y
#define ROW_K1(NAME, OP, T) \
    extern "C" __global__ void fused_##NAME##_w_##T(ROW_ARGS(T)) { \
        rows_impl<T, true, OP, 32>(rows, d, x, w, b, flags, eps, y); \
    } \
    extern "C" __global__ void fused_##NAME##_b_##T(ROW_ARGS(T)) { \
        rows_impl<T, false, OP, 16>(rows, d, x, w, b, flags, eps, y); \
    } \
    extern "C" __global__ void fused_##NAME##_s_##T(ROW_ARGS(T)) { \
        rows_impl<T, false, OP, 0>(rows, d, x, w, b, flags, eps, y); \
    }
#define ROW_K(T) \
    ROW_K1(softmax, ROW_SOFTMAX, T) \
    ROW_K1(log_softmax, ROW_LOG_SOFTMAX, T) \
    ROW_K1(layer_norm, ROW_LAYER_NORM, T) \
    ROW_K1(rms_norm, ROW_RMS_NORM, T)
FOR_FLOATS(ROW_K)

// ---- RMS norm backward ----------------------------------------------------------------------
// Per row, with r = rsqrt(mean(x²) + eps) and h = g·w (or g):
//   ∂x = r·h − x·r³·mean(h·x)
// and, when there is a weight, r is saved per row for ∂w = Σ_rows g·(x·r) (two more kernels:
// per-chunk column sums, then their sum in chunk order, so the result is deterministic).
template <typename T, bool WARP, int NPL>
__device__ __forceinline__ void rms_bwd_impl(u32 rows, u32 d, const T* x, const T* g, const T* w,
                                             u32 flags, double eps_d, T* gx, CT<T>* rsave) {
    typedef CT<T> C;
    const RowGroup<WARP> gr;
    const u32 lane = gr.lane, lanes = gr.lanes;
    const C eps = (C)eps_d;
    const C n = (C)d;
    const bool hw = (flags & ROW_HAS_W) != 0;
    C xv[NPL > 0 ? NPL : 1], gv[NPL > 0 ? NPL : 1];
    for (u32 r = gr.first; r < rows; r += gr.step) {
        const u32 base = r * d;
        const T *xr = x + base, *grow = g + base;
        T* o = gx + base;
        row_load<NPL, T>(xv, xr, d, lane, lanes);
        row_load<NPL, T>(gv, grow, d, lane, lanes);
        // Σx² and Σh·x, with h = g·w.
        C q = 0, hx = 0;
        if constexpr (NPL > 0) {
#pragma unroll
            for (int k = 0; k < NPL; ++k) {
                const u32 j = lane + (u32)k * lanes;
                if (j < d) {
                    q += xv[k] * xv[k];
                    hx += (hw ? gv[k] * ld<T>(w[j]) : gv[k]) * xv[k];
                }
            }
        } else {
            for (u32 j = lane; j < d; j += lanes) {
                const C a = ld<T>(xr[j]);
                C h = ld<T>(grow[j]);
                if (hw) h = h * ld<T>(w[j]);
                q += a * a;
                hx += h * a;
            }
        }
        q = grp_sum<WARP>(q);
        hx = grp_sum<WARP>(hx);
        const C rs = (C)1 / msqrt(q / n + eps);
        const C c = rs * rs * rs * (hx / n);
        if constexpr (NPL > 0) {
#pragma unroll
            for (int k = 0; k < NPL; ++k) {
                const u32 j = lane + (u32)k * lanes;
                if (j < d) {
                    const C h = hw ? gv[k] * ld<T>(w[j]) : gv[k];
                    o[j] = st<T>(rs * h - xv[k] * c);
                }
            }
        } else {
            for (u32 j = lane; j < d; j += lanes) {
                C h = ld<T>(grow[j]);
                if (hw) h = h * ld<T>(w[j]);
                o[j] = st<T>(rs * h - ld<T>(xr[j]) * c);
            }
        }
        if (hw && lane == 0) rsave[r] = rs;
    }
}

// Column sums of g·(x·r) over chunks of `chunk` rows: block (32, 8), grid (⌈d/32⌉, chunks);
// part[chunk][col].
template <typename T>
__device__ __forceinline__ void rms_gw_part_impl(u32 rows, u32 d, const T* x, const T* g,
                                                 const CT<T>* rsave, u32 chunk, CT<T>* part) {
    typedef CT<T> C;
    __shared__ C sh[8][33];
    const u32 col = blockIdx.x * 32u + threadIdx.x;
    const u32 r0 = blockIdx.y * chunk;
    const u32 r1 = min(rows, r0 + chunk);
    C acc = 0;
    if (col < d) {
        for (u32 r = r0 + threadIdx.y; r < r1; r += 8u) {
            const u32 i = r * d + col;
            acc += ld<T>(g[i]) * (ld<T>(x[i]) * rsave[r]);
        }
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < d) {
        C s = sh[0][threadIdx.x];
        for (u32 k = 1; k < 8u; ++k) s += sh[k][threadIdx.x];
        part[(u64)blockIdx.y * d + col] = s;
    }
}

template <typename T>
__device__ __forceinline__ void rms_gw_sum_impl(u32 d, u32 chunks, const CT<T>* part, T* gw) {
    GRID_STRIDE(c, d) {
        CT<T> s = 0;
        for (u32 k = 0; k < chunks; ++k) s += part[(u64)k * d + c];
        gw[c] = st<T>(s);
    }
}

#define RMS_BWD_ARGS(T) u32 rows, u32 d, const T* x, const T* g, const T* w, u32 flags, double eps, \
                        T* gx, CT<T>* rsave
#define RMS_BWD_K(T) \
    extern "C" __global__ void fused_rms_bwd_w_##T(RMS_BWD_ARGS(T)) { \
        rms_bwd_impl<T, true, 32>(rows, d, x, g, w, flags, eps, gx, rsave); \
    } \
    extern "C" __global__ void fused_rms_bwd_b_##T(RMS_BWD_ARGS(T)) { \
        rms_bwd_impl<T, false, 16>(rows, d, x, g, w, flags, eps, gx, rsave); \
    } \
    extern "C" __global__ void fused_rms_bwd_s_##T(RMS_BWD_ARGS(T)) { \
        rms_bwd_impl<T, false, 0>(rows, d, x, g, w, flags, eps, gx, rsave); \
    } \
    extern "C" __global__ void fused_rms_gw_part_##T(u32 rows, u32 d, const T* x, const T* g, \
                                                     const CT<T>* rsave, u32 chunk, CT<T>* part) { \
        rms_gw_part_impl<T>(rows, d, x, g, rsave, chunk, part); \
    } \
    extern "C" __global__ void fused_rms_gw_sum_##T(u32 d, u32 chunks, const CT<T>* part, T* gw) { \
        rms_gw_sum_impl<T>(d, chunks, part, gw); \
    }
FOR_FLOATS(RMS_BWD_K)

// ---- layer norm backward --------------------------------------------------------------------
// Per row, with x̂ = (x − mean)·r, r = rsqrt(var + eps) and h = g·w (or g):
//   ∂x = r·(h − mean(h) − x̂·mean(h·x̂))
// and, when there is a weight or a bias, mean and r are saved per row for ∂w = Σ_rows g·x̂ and
// ∂b = Σ_rows g (per-chunk column sums, then their sum in chunk order: deterministic).
template <typename T, bool WARP, int NPL>
__device__ __forceinline__ void ln_bwd_impl(u32 rows, u32 d, const T* x, const T* g, const T* w,
                                            u32 flags, double eps_d, T* gx, CT<T>* save) {
    typedef CT<T> C;
    const RowGroup<WARP> gr;
    const u32 lane = gr.lane, lanes = gr.lanes;
    const C eps = (C)eps_d;
    const C n = (C)d;
    const bool hw = (flags & ROW_HAS_W) != 0;
    C xv[NPL > 0 ? NPL : 1], gv[NPL > 0 ? NPL : 1];
    for (u32 r = gr.first; r < rows; r += gr.step) {
        const u32 base = r * d;
        const T *xr = x + base, *grow = g + base;
        T* o = gx + base;
        row_load<NPL, T>(xv, xr, d, lane, lanes);
        row_load<NPL, T>(gv, grow, d, lane, lanes);
        C s = 0;
        row_for<NPL, T>(xv, xr, d, lane, lanes, [&](u32, C a) { s += a; });
        const C mean = grp_sum<WARP>(s) / n;
        C q = 0;
        row_for<NPL, T>(xv, xr, d, lane, lanes, [&](u32, C a) {
            const C c = a - mean;
            q += c * c;
        });
        const C rs = (C)1 / msqrt(grp_sum<WARP>(q) / n + eps);
        // Σh and Σh·x̂.
        C sh = 0, shx = 0;
        row_for2<NPL, T>(xv, xr, gv, grow, d, lane, lanes, [&](u32 j, C a, C gj) {
            const C h = hw ? gj * ld<T>(w[j]) : gj;
            const C xh = (a - mean) * rs;
            sh += h;
            shx += h * xh;
        });
        sh = grp_sum<WARP>(sh) / n;
        shx = grp_sum<WARP>(shx) / n;
        row_for2<NPL, T>(xv, xr, gv, grow, d, lane, lanes, [&](u32 j, C a, C gj) {
            const C h = hw ? gj * ld<T>(w[j]) : gj;
            const C xh = (a - mean) * rs;
            o[j] = st<T>(rs * (h - sh - xh * shx));
        });
        if (save != nullptr && lane == 0) {
            save[2 * r] = mean;
            save[2 * r + 1] = rs;
        }
    }
}

// Column sums over chunks of `chunk` rows of g·x̂ (into part[0..chunks)) and of g (into
// part[chunks..2·chunks)): block (32, 8), grid (⌈d/32⌉, chunks).
template <typename T>
__device__ __forceinline__ void ln_wb_part_impl(u32 rows, u32 d, const T* x, const T* g,
                                                const CT<T>* save, u32 chunk, CT<T>* part) {
    typedef CT<T> C;
    __shared__ C shw[8][33], shb[8][33];
    const u32 col = blockIdx.x * 32u + threadIdx.x;
    const u32 r0 = blockIdx.y * chunk;
    const u32 r1 = min(rows, r0 + chunk);
    C aw = 0, ab = 0;
    if (col < d) {
        for (u32 r = r0 + threadIdx.y; r < r1; r += 8u) {
            const u32 i = r * d + col;
            const C gi = ld<T>(g[i]);
            aw += gi * ((ld<T>(x[i]) - save[2 * r]) * save[2 * r + 1]);
            ab += gi;
        }
    }
    shw[threadIdx.y][threadIdx.x] = aw;
    shb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && col < d) {
        C sw = shw[0][threadIdx.x], sb = shb[0][threadIdx.x];
        for (u32 k = 1; k < 8u; ++k) {
            sw += shw[k][threadIdx.x];
            sb += shb[k][threadIdx.x];
        }
        part[(u64)blockIdx.y * d + col] = sw;
        part[((u64)gridDim.y + blockIdx.y) * d + col] = sb;
    }
}

template <typename T>
__device__ __forceinline__ void ln_wb_sum_impl(u32 d, u32 chunks, const CT<T>* part, T* gw,
                                               T* gb) {
    GRID_STRIDE(c, d) {
        CT<T> sw = 0, sb = 0;
        for (u32 k = 0; k < chunks; ++k) {
            sw += part[(u64)k * d + c];
            sb += part[((u64)chunks + k) * d + c];
        }
        if (gw != nullptr) gw[c] = st<T>(sw);
        if (gb != nullptr) gb[c] = st<T>(sb);
    }
}

#define LN_BWD_ARGS(T) u32 rows, u32 d, const T* x, const T* g, const T* w, u32 flags, double eps, \
                       T* gx, CT<T>* save
#define LN_BWD_K(T) \
    extern "C" __global__ void fused_ln_bwd_w_##T(LN_BWD_ARGS(T)) { \
        ln_bwd_impl<T, true, 32>(rows, d, x, g, w, flags, eps, gx, save); \
    } \
    extern "C" __global__ void fused_ln_bwd_b_##T(LN_BWD_ARGS(T)) { \
        ln_bwd_impl<T, false, 16>(rows, d, x, g, w, flags, eps, gx, save); \
    } \
    extern "C" __global__ void fused_ln_bwd_s_##T(LN_BWD_ARGS(T)) { \
        ln_bwd_impl<T, false, 0>(rows, d, x, g, w, flags, eps, gx, save); \
    } \
    extern "C" __global__ void fused_ln_wb_part_##T(u32 rows, u32 d, const T* x, const T* g, \
                                                    const CT<T>* save, u32 chunk, CT<T>* part) { \
        ln_wb_part_impl<T>(rows, d, x, g, save, chunk, part); \
    } \
    extern "C" __global__ void fused_ln_wb_sum_##T(u32 d, u32 chunks, const CT<T>* part, T* gw, \
                                                   T* gb) { \
        ln_wb_sum_impl<T>(d, chunks, part, gw, gb); \
    }
FOR_FLOATS(LN_BWD_K)

// ---- SwiGLU ---------------------------------------------------------------------------------
template <typename C> __device__ __forceinline__ C sigm(C a) { return (C)1 / ((C)1 + mexp(-a)); }

#define SILU_K(T) \
    extern "C" __global__ void fused_silu_mul_##T(u32 n, const T* a, const __grid_constant__ Strided as, const T* b, const __grid_constant__ Strided bs, \
                                                  T* out) { \
        GRID_STRIDE(i, n) { \
            const CT<T> av = ld<T>(a[at(as, i)]); \
            out[i] = st<T>(av * sigm(av) * ld<T>(b[at(bs, i)])); \
        } \
    } \
    extern "C" __global__ void fused_silu_mul_bwd_##T(u32 n, const T* a, const __grid_constant__ Strided as, const T* b, \
                                                      const __grid_constant__ Strided bs, const T* g, const __grid_constant__ Strided gs, T* ga, \
                                                      T* gb) { \
        GRID_STRIDE(i, n) { \
            const CT<T> av = ld<T>(a[at(as, i)]), bv = ld<T>(b[at(bs, i)]), gv = ld<T>(g[at(gs, i)]); \
            const CT<T> s = sigm(av), sa = av * s; \
            gb[i] = st<T>(gv * sa); \
            ga[i] = st<T>(gv * bv * (s + sa * ((CT<T>)1 - s))); \
        } \
    }
FOR_FLOATS(SILU_K)

// ---- softmax cross-entropy --------------------------------------------------------------------
// One block per row (grid-stride over rows). The log-sum-exp is an online (max, sum) pair in
// one read of the row: sum = Σ e^(x − max), kept exact for infinite maxima (an element equal
// to the running max adds 1, so −inf rows give lse = −inf and +inf gives +inf; a NaN anywhere
// makes the sum NaN). lse = max + log(sum).

template <typename C> __device__ __forceinline__ void ms_add(C& m, C& s, C v) {
    if (v > m) {
        s = s * mexp(m - v) + (C)1;
        m = v;
    } else {
        s += (v == m) ? (C)1 : mexp(v - m);
    }
}
template <typename C> __device__ __forceinline__ void ms_merge(C& m, C& s, C m2, C s2) {
    const C nm = m2 > m ? m2 : m;
    const C a = (m == nm) ? s : s * mexp(m - nm);
    const C b = (m2 == nm) ? s2 : s2 * mexp(m2 - nm);
    m = nm;
    s = a + b;
}

// Block-wide (max, sum, Σx) of a row: every thread gets the result.
template <typename C> __device__ __forceinline__ void block_ms(C& m, C& s, C& sx) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const C m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const C s2 = __shfl_xor_sync(0xffffffffu, s, o);
        sx += __shfl_xor_sync(0xffffffffu, sx, o);
        ms_merge(m, s, m2, s2);
    }
    __shared__ C shm[32], shs[32], shx[32];
    const u32 lane = threadIdx.x & 31u, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) {
        shm[w] = m;
        shs[w] = s;
        shx[w] = sx;
    }
    __syncthreads();
    m = shm[0];
    s = shs[0];
    sx = shx[0];
    for (u32 i = 1; i < nw; ++i) {
        ms_merge(m, s, shm[i], shs[i]);
        sx += shx[i];
    }
}

// 16 bytes of elements, for vector loads and stores.
template <typename T> struct Vec16 {
    static const u32 N = 16 / sizeof(T);
    union {
        uint4 q;
        T e[16 / sizeof(T)];
    };
};

// The online (max, sum) of row elements r·c .. r·c + c of this thread (and their sum Σx when
// SX). With `vec`, the row is contiguous and element 0 of the storage 16-byte aligned: the
// row is read with 16-byte loads between a scalar head and tail, and each vector's elements
// are folded in together (one max, then independent exps).
template <typename T, bool SX>
__device__ __forceinline__ void row_ms(const T* x, const Strided& xs, u32 base, u32 c, bool vec,
                                       CT<T>& m, CT<T>& s, CT<T>& sx) {
    typedef CT<T> C;
    if (vec) {
        constexpr u32 V = Vec16<T>::N;
        const T* row = x + xs.offset + base;
        const u32 mis = (u32)(((u64)row / sizeof(T)) % V);
        const u32 head = min((V - mis) % V, c);
        for (u32 j = threadIdx.x; j < head; j += blockDim.x) {
            const C v = ld<T>(row[j]);
            ms_add(m, s, v);
            if (SX) sx += v;
        }
        const uint4* vp = (const uint4*)(row + head);
        const u32 nv = (c - head) / V;
#pragma unroll 2
        for (u32 k = threadIdx.x; k < nv; k += blockDim.x) {
            Vec16<T> u;
            u.q = vp[k];
            C e[V];
            C mk = m;
#pragma unroll
            for (u32 q = 0; q < V; ++q) {
                e[q] = ld<T>(u.e[q]);
                if (e[q] > mk) mk = e[q];
            }
            if (mk > m) {
                s = s * mexp(m - mk);
                m = mk;
            }
#pragma unroll
            for (u32 q = 0; q < V; ++q) {
                s += (e[q] == m) ? (C)1 : mexp(e[q] - m);
                if (SX) sx += e[q];
            }
        }
        for (u32 j = head + nv * V + threadIdx.x; j < c; j += blockDim.x) {
            const C v = ld<T>(row[j]);
            ms_add(m, s, v);
            if (SX) sx += v;
        }
    } else {
        for (u32 j = threadIdx.x; j < c; j += blockDim.x) {
            const C v = ld<T>(x[at(xs, base + j)]);
            ms_add(m, s, v);
            if (SX) sx += v;
        }
    }
}

template <typename T> __device__ __forceinline__ bool vec_ok(const T* x, const Strided& xs) {
    return xs.rank == 0 && (xs.offset % Vec16<T>::N) == 0 && ((u64)x % 16) == 0;
}

// The row's target: -1 for an ignored row, -2 (and the error flag) for an out-of-range one.
__device__ __forceinline__ i64 ce_target(const i64* t, const Strided& ts, u32 r, u32 c,
                                         u32 has_ignore, i64 ignore, u32* err) {
    const i64 tv = t[at(ts, r)];
    if (has_ignore && tv == ignore) return -1;
    if (tv < 0 || tv >= (i64)c) {
        if (threadIdx.x == 0) raise_err(err, ERR_INDEX);
        return -2;
    }
    return tv;
}

// loss[r] = lse − (1 − ε)·x[t] − ε·mean(x), 0 on ignored rows.
template <typename T>
__device__ __forceinline__ void ce_fwd_impl(u32 rows, u32 c, const T* x, const Strided& xs,
                                            const i64* t, const Strided& ts, u32 has_ignore,
                                            i64 ignore, double eps_d, T* out, u32* err) {
    typedef CT<T> C;
    const C eps = (C)eps_d;
    const bool vec = vec_ok(x, xs);
    for (u32 r = blockIdx.x; r < rows; r += gridDim.x) {
        const i64 tv = ce_target(t, ts, r, c, has_ignore, ignore, err);
        if (tv < 0) {  // the same on every thread of the block
            if (threadIdx.x == 0) out[r] = st<T>((C)0);
            continue;
        }
        const u32 base = r * c;
        C m = neg_inf<C>(), s = 0, sx = 0;
        row_ms<T, true>(x, xs, base, c, vec, m, s, sx);
        block_ms(m, s, sx);
        if (threadIdx.x == 0) {
            const C lse = m + mlog(s);
            C loss = lse - ((C)1 - eps) * ld<T>(x[at(xs, base + (u32)tv)]);
            if (eps > (C)0) loss = loss - eps * (sx / (C)c);
            out[r] = st<T>(loss);
        }
    }
}

// ∂x[r, j] = g[r]·(e^(x − lse) − ε/C − [j = t]·(1 − ε)), 0 on ignored rows.
template <typename T>
__device__ __forceinline__ void ce_bwd_impl(u32 rows, u32 c, const T* x, const Strided& xs,
                                            const i64* t, const Strided& ts, u32 has_ignore,
                                            i64 ignore, double eps_d, const T* g,
                                            const Strided& gs, T* out, u32* err) {
    typedef CT<T> C;
    const C eps = (C)eps_d;
    const C smooth = eps / (C)c;
    const C hit = (C)1 - eps;
    const bool vec = vec_ok(x, xs) && ((u64)out % 16) == 0;
    for (u32 r = blockIdx.x; r < rows; r += gridDim.x) {
        const i64 tv = ce_target(t, ts, r, c, has_ignore, ignore, err);
        const u32 base = r * c;
        T* o = out + base;
        if (tv < 0) {
            const T z = st<T>((C)0);
            for (u32 j = threadIdx.x; j < c; j += blockDim.x) o[j] = z;
            continue;
        }
        C m = neg_inf<C>(), s = 0, sx = 0;
        row_ms<T, false>(x, xs, base, c, vec, m, s, sx);
        block_ms(m, s, sx);
        const C lse = m + mlog(s);
        const C gr = ld<T>(g[at(gs, r)]);
        const u32 tj = (u32)tv;
        auto grad = [&](u32 j, C v) {
            C p = mexp(v - lse) - smooth;
            if (j == tj) p -= hit;
            return st<T>(gr * p);
        };
        if (vec) {
            // The output row has the input row's alignment (both start at element base of a
            // 16-byte aligned buffer, the input's offset a multiple of the vector width).
            constexpr u32 V = Vec16<T>::N;
            const T* row = x + xs.offset + base;
            const u32 mis = (u32)(((u64)row / sizeof(T)) % V);
            const u32 head = min((V - mis) % V, c);
            for (u32 j = threadIdx.x; j < head; j += blockDim.x) o[j] = grad(j, ld<T>(row[j]));
            const uint4* vp = (const uint4*)(row + head);
            uint4* vo = (uint4*)(o + head);
            const u32 nv = (c - head) / V;
            for (u32 k = threadIdx.x; k < nv; k += blockDim.x) {
                Vec16<T> u;
                u.q = vp[k];
#pragma unroll
                for (u32 e = 0; e < V; ++e) u.e[e] = grad(head + k * V + e, ld<T>(u.e[e]));
                vo[k] = u.q;
            }
            for (u32 j = head + nv * V + threadIdx.x; j < c; j += blockDim.x)
                o[j] = grad(j, ld<T>(row[j]));
        } else {
            for (u32 j = threadIdx.x; j < c; j += blockDim.x)
                o[j] = grad(j, ld<T>(x[at(xs, base + j)]));
        }
    }
}

#define CE_K(T) \
    extern "C" __global__ void fused_ce_fwd_##T(u32 rows, u32 c, const T* x, const __grid_constant__ Strided xs, const i64* t, \
                                                const __grid_constant__ Strided ts, u32 has_ignore, i64 ignore, double eps, \
                                                T* out, u32* err) { \
        ce_fwd_impl<T>(rows, c, x, xs, t, ts, has_ignore, ignore, eps, out, err); \
    } \
    extern "C" __global__ void fused_ce_bwd_##T(u32 rows, u32 c, const T* x, const __grid_constant__ Strided xs, const i64* t, \
                                                const __grid_constant__ Strided ts, u32 has_ignore, i64 ignore, double eps, \
                                                const T* g, const __grid_constant__ Strided gs, T* out, u32* err) { \
        ce_bwd_impl<T>(rows, c, x, xs, t, ts, has_ignore, ignore, eps, g, gs, out, err); \
    }
FOR_FLOATS(CE_K)

// ---- rotary embeddings ------------------------------------------------------------------------
// x: [B, H, L, D] (any view), cos/sin: [L, D/2]; one thread per rotated pair. Pair i of a row
// is (i, i + D/2) (rotate-half) or (2i, 2i + 1) (interleaved).
template <typename T, bool INTERLEAVED>
__device__ __forceinline__ void rope_impl(u32 pairs, u32 h, u32 l, const T* x, const Strided& xs,
                                          const T* cs, const Strided& css, const T* sn,
                                          const Strided& sns, T* y) {
    typedef CT<T> C;
    GRID_STRIDE(p, pairs) {
        const u32 row = p / h, i = p - row * h;
        const u32 pos = row % l;
        const C c = ld<T>(cs[at(css, pos * h + i)]);
        const C s = ld<T>(sn[at(sns, pos * h + i)]);
        const u32 base = row * 2u * h;
        const u32 i1 = INTERLEAVED ? base + 2u * i : base + i;
        const u32 i2 = INTERLEAVED ? i1 + 1u : i1 + h;
        const C x1 = ld<T>(x[at(xs, i1)]), x2 = ld<T>(x[at(xs, i2)]);
        y[i1] = st<T>(x1 * c - x2 * s);
        y[i2] = st<T>(x2 * c + x1 * s);
    }
}

#define ROPE_K(T) \
    extern "C" __global__ void fused_rope_half_##T(u32 pairs, u32 h, u32 l, const T* x, const __grid_constant__ Strided xs, \
                                                   const T* cs, const __grid_constant__ Strided css, const T* sn, const __grid_constant__ Strided sns, \
                                                   T* y) { \
        rope_impl<T, false>(pairs, h, l, x, xs, cs, css, sn, sns, y); \
    } \
    extern "C" __global__ void fused_rope_inter_##T(u32 pairs, u32 h, u32 l, const T* x, const __grid_constant__ Strided xs, \
                                                    const T* cs, const __grid_constant__ Strided css, const T* sn, const __grid_constant__ Strided sns, \
                                                    T* y) { \
        rope_impl<T, true>(pairs, h, l, x, xs, cs, css, sn, sns, y); \
    }
FOR_FLOATS(ROPE_K)

// ---- optimizer updates ------------------------------------------------------------------------
// In place on contiguous parameter and state (p, s0..s2 start at their tensors' offsets); the
// gradient is read through its view. The scalars come from the host in f64 and are rounded to
// the compute type here, as the CPU backend rounds them to the element type. Formulas follow
// the CPU backend's fused path (PyTorch's single-tensor code) operation by operation.
struct OptimArgs {
    double scale, neg_lr, b1, w1, b2, w2, eps, wd, decay, bc2_sqrt, momentum, damp;
    u32 flags;
    u32 pad;
};
#define OPT_SCALE 1u
#define OPT_MAXIMIZE 2u
#define OPT_NESTEROV 4u
#define OPT_FIRST 8u
#define OPT_AMSGRAD 16u
#define OPT_CENTERED 32u
#define OPT_MOMENTUM 64u
#define OPT_DECAY 128u

// torch.lerp with a scalar weight (ATen's two-sided form).
template <typename C> __device__ __forceinline__ C lerp_w(C a, C b, C w) {
    return (w < (C)0.5 && w > (C)-0.5) ? a + w * (b - a) : b - (b - a) * ((C)1 - w);
}
// torch.sign: 0 stays 0, NaN stays NaN.
template <typename C> __device__ __forceinline__ C sign_of(C v) {
    return v > (C)0 ? (C)1 : (v < (C)0 ? (C)-1 : v);
}
// torch.maximum: NaN propagates.
template <typename C> __device__ __forceinline__ C maximum_of(C a, C b) {
    return (a != a || a > b) ? a : b;
}

// The gradient as the rule sees it: scaled, negated for `maximize`.
template <typename T>
__device__ __forceinline__ CT<T> opt_grad(const T* g, const Strided& gs, u32 i, const OptimArgs& a) {
    CT<T> v = ld<T>(g[at(gs, i)]);
    if (a.flags & OPT_SCALE) v = v * (CT<T>)a.scale;
    if (a.flags & OPT_MAXIMIZE) v = -v;
    return v;
}

template <typename T>
__device__ __forceinline__ void sgd_impl(u32 n, T* p, const T* g, const Strided& gs, T* s0,
                                         const OptimArgs& a) {
    typedef CT<T> C;
    const C neg_lr = (C)a.neg_lr, wd = (C)a.wd, mom = (C)a.momentum, damp = (C)a.damp;
    const bool has_mom = a.flags & OPT_MOMENTUM, first = a.flags & OPT_FIRST,
               nesterov = a.flags & OPT_NESTEROV;
    GRID_STRIDE(i, n) {
        C d = opt_grad(g, gs, i, a);
        const C pi = ld<T>(p[i]);
        if (wd != (C)0) d = d + wd * pi;
        if (has_mom) {
            const C buf = first ? d : ld<T>(s0[i]) * mom + damp * d;
            s0[i] = st<T>(buf);
            d = nesterov ? d + mom * buf : buf;
        }
        p[i] = st<T>(pi + neg_lr * d);
    }
}

template <typename T>
__device__ __forceinline__ void adam_impl(u32 n, T* p, const T* g, const Strided& gs, T* s0,
                                          T* s1, T* s2, const OptimArgs& a) {
    typedef CT<T> C;
    const C neg_step = (C)a.neg_lr, w1 = (C)a.w1, b2 = (C)a.b2, w2 = (C)a.w2, eps = (C)a.eps,
            wd = (C)a.wd, decay = (C)a.decay, bc2 = (C)a.bc2_sqrt;
    const bool has_decay = a.flags & OPT_DECAY, ams = a.flags & OPT_AMSGRAD;
    GRID_STRIDE(i, n) {
        C d = opt_grad(g, gs, i, a);
        C pi = ld<T>(p[i]);
        if (has_decay) pi = pi * decay;
        else if (wd != (C)0) d = d + wd * pi;
        const C m = lerp_w(ld<T>(s0[i]), d, w1);
        s0[i] = st<T>(m);
        C v = ld<T>(s1[i]) * b2 + w2 * d * d;
        s1[i] = st<T>(v);
        if (ams) {
            v = maximum_of(ld<T>(s2[i]), v);
            s2[i] = st<T>(v);
        }
        const C denom = msqrt(v) / bc2 + eps;
        p[i] = st<T>(pi + neg_step * (m / denom));
    }
}

// s0 = square_avg, s1 = momentum_buffer (if momentum), s2 = grad_avg (if centered).
template <typename T>
__device__ __forceinline__ void rmsprop_impl(u32 n, T* p, const T* g, const Strided& gs, T* s0,
                                             T* s1, T* s2, const OptimArgs& a) {
    typedef CT<T> C;
    const C neg_lr = (C)a.neg_lr, alpha = (C)a.b2, w = (C)a.w2, eps = (C)a.eps, wd = (C)a.wd,
            mom = (C)a.momentum;
    const bool has_mom = a.flags & OPT_MOMENTUM, centered = a.flags & OPT_CENTERED;
    GRID_STRIDE(i, n) {
        C d = opt_grad(g, gs, i, a);
        const C pi = ld<T>(p[i]);
        if (wd != (C)0) d = d + wd * pi;
        const C sq = ld<T>(s0[i]) * alpha + w * d * d;
        s0[i] = st<T>(sq);
        C avg;
        if (centered) {
            const C ga = lerp_w(ld<T>(s2[i]), d, w);
            s2[i] = st<T>(ga);
            avg = msqrt(sq - ga * ga);
        } else {
            avg = msqrt(sq);
        }
        avg = avg + eps;
        if (has_mom) {
            const C b = ld<T>(s1[i]) * mom + d / avg;
            s1[i] = st<T>(b);
            p[i] = st<T>(pi + neg_lr * b);
        } else {
            p[i] = st<T>(pi + neg_lr * (d / avg));
        }
    }
}

template <typename T>
__device__ __forceinline__ void adagrad_impl(u32 n, T* p, const T* g, const Strided& gs, T* s0,
                                             const OptimArgs& a) {
    typedef CT<T> C;
    const C neg_clr = (C)a.neg_lr, eps = (C)a.eps, wd = (C)a.wd;
    GRID_STRIDE(i, n) {
        C d = opt_grad(g, gs, i, a);
        const C pi = ld<T>(p[i]);
        if (wd != (C)0) d = d + wd * pi;
        const C sum = ld<T>(s0[i]) + d * d;
        s0[i] = st<T>(sum);
        p[i] = st<T>(pi + neg_clr * (d / (msqrt(sum) + eps)));
    }
}

template <typename T>
__device__ __forceinline__ void lion_impl(u32 n, T* p, const T* g, const Strided& gs, T* s0,
                                          const OptimArgs& a) {
    typedef CT<T> C;
    const C neg_lr = (C)a.neg_lr, decay = (C)a.decay, b1 = (C)a.b1, w1 = (C)a.w1, b2 = (C)a.b2,
            w2 = (C)a.w2;
    GRID_STRIDE(i, n) {
        const C d = opt_grad(g, gs, i, a);
        const C m = ld<T>(s0[i]);
        const C c = m * b1 + w1 * d;
        p[i] = st<T>(ld<T>(p[i]) * decay + neg_lr * sign_of(c));
        s0[i] = st<T>(m * b2 + w2 * d);
    }
}

#define OPT_ARGS(T) u32 n, T* p, const T* g, const __grid_constant__ Strided gs, T* s0, T* s1, T* s2, OptimArgs a
#define OPT_K(T) \
    extern "C" __global__ void fused_optim_sgd_##T(OPT_ARGS(T)) { sgd_impl<T>(n, p, g, gs, s0, a); } \
    extern "C" __global__ void fused_optim_adam_##T(OPT_ARGS(T)) { adam_impl<T>(n, p, g, gs, s0, s1, s2, a); } \
    extern "C" __global__ void fused_optim_rmsprop_##T(OPT_ARGS(T)) { \
        rmsprop_impl<T>(n, p, g, gs, s0, s1, s2, a); \
    } \
    extern "C" __global__ void fused_optim_adagrad_##T(OPT_ARGS(T)) { adagrad_impl<T>(n, p, g, gs, s0, a); } \
    extern "C" __global__ void fused_optim_lion_##T(OPT_ARGS(T)) { lion_impl<T>(n, p, g, gs, s0, a); }
FOR_FLOATS(OPT_K)
