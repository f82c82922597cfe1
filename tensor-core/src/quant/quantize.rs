//! Scalar reference quantization of f32 to ggml blocks: F32, F16, BF16, Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0, Q8_1, Q2_K..Q6_K, Q8_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4 and Q1_0
//! ([`GgmlType::can_quantize`]).
//!
//! Every format reproduces, byte for byte, what ggml writes with no importance matrix
//! (`ggml_quantize_chunk(type, ..., imatrix = NULL)`, or `quantize_row_*_ref` for Q8_1 and Q8_K,
//! which that function does not take). That means the same f32 operations in the same order
//! (no fused multiply-add), the same rounding (`roundf` is `f32::round`; ggml's `nearest_int`
//! rounds half to even) and the same tie-breaking in every search. The fixtures under
//! `tests/fixtures/quant` hold ggml's bytes and test this. The i-quants below 4 bits are left
//! out: ggml needs an importance matrix for most of them. Speed is a later concern.

use crate::{bf16, f16, Error, Result};

use super::types::{GgmlType, QK_K};

/// Quantize `src`, a whole number of `ty` blocks, into `out`, which must have room for
/// exactly the bytes those blocks take.
pub fn quantize_into(ty: GgmlType, src: &[f32], out: &mut [u8]) -> Result<()> {
    let (block, size) = (ty.block_size(), ty.type_size());
    if !src.len().is_multiple_of(block) || out.len() != src.len() / block * size {
        return Err(Error::msg(format!(
            "quantize {ty}: {} elements do not fill {} bytes ({} per block of {size} bytes)",
            src.len(),
            out.len(),
            block
        )));
    }
    let kernel: fn(&[f32], &mut [u8]) = match ty {
        GgmlType::F32 => |x, b| b.copy_from_slice(&x[0].to_le_bytes()),
        GgmlType::F16 => |x, b| put_half(b, x[0]),
        GgmlType::BF16 => |x, b| b.copy_from_slice(&to_bf16(x[0]).to_le_bytes()),
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q8_1 => q8_1,
        GgmlType::Q2_K => q2_k,
        GgmlType::Q3_K => q3_k,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        GgmlType::Q8_K => q8_k,
        GgmlType::IQ4_NL => iq4_nl,
        GgmlType::IQ4_XS => iq4_xs,
        GgmlType::TQ1_0 => tq1_0,
        GgmlType::TQ2_0 => tq2_0,
        GgmlType::MXFP4 => mxfp4,
        GgmlType::Q1_0 => q1_0,
        other => {
            debug_assert!(!other.can_quantize());
            return Err(Error::msg(format!(
                "quantize: ggml type {other} is not supported"
            )));
        }
    };
    for (x, b) in src.chunks_exact(block).zip(out.chunks_exact_mut(size)) {
        kernel(x, b);
    }
    Ok(())
}

/// Quantize `src`, a whole number of `ty` blocks, into a new vector.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; src.len() / ty.block_size() * ty.type_size()];
    quantize_into(ty, src, &mut out)?;
    Ok(out)
}

/// ggml's `ggml_compute_fp32_to_bf16`: round to nearest even, NaN forced quiet. Spelled out
/// rather than trusting a library, because the NaN payload is part of the bytes.
fn to_bf16(x: f32) -> bf16 {
    let u = x.to_bits();
    let bits = if u & 0x7fff_ffff > 0x7f80_0000 {
        (u >> 16) | 64
    } else {
        (u + (0x7fff + ((u >> 16) & 1))) >> 16
    };
    bf16::from_bits(bits as u16)
}

/// ggml's `GGML_FP32_TO_FP16`: round to nearest even, like `f16::from_f32`, except that every
/// NaN becomes the canonical quiet NaN 0x7E00 (with its sign).
fn to_f16(x: f32) -> u16 {
    if x.is_nan() {
        ((x.to_bits() >> 16) & 0x8000) as u16 | 0x7E00
    } else {
        f16::from_f32(x).to_bits()
    }
}

fn put_half(b: &mut [u8], x: f32) {
    b[..2].copy_from_slice(&to_f16(x).to_le_bytes());
}

/// C's float-to-int conversion as x86-64 compiles it (`cvttss2si`): truncation toward zero,
/// and `i32::MIN` for NaN and out-of-range values, where C leaves the result undefined. ggml
/// then narrows to `int8_t`/`uint8_t` by keeping the low byte, which `as i8`/`as u8` on the
/// i32 also does. Only inputs whose block scale is subnormal (so its inverse overflows) or
/// not finite reach the undefined cases; x86 is the platform the fixtures come from.
fn trunc_to_int(x: f32) -> i32 {
    const TWO_POW_31: f32 = 2_147_483_648.0;
    if x.abs() < TWO_POW_31 {
        x as i32
    } else {
        i32::MIN
    }
}

/// `lroundf(x)` narrowed to `int`, as ggml's ternary quantizers use it: round half away from
/// zero; glibc on x86-64 returns `LONG_MIN` (low 32 bits 0) for NaN and out-of-range values.
fn lround_to_int(x: f32) -> i32 {
    let r = x.round();
    if r.abs() < i64::MAX as f32 {
        r as i64 as i32
    } else {
        0
    }
}

/// ggml's `nearest_int`: adding 1.5 * 2^23 pushes the fraction out of the mantissa, so the
/// FPU's round-half-to-even does the rounding; the low mantissa bits are then the integer.
/// Exact for |x| < 2^22. Larger values (only from degenerate blocks, where ggml's debug
/// assert would fire) give the same meaningless result as ggml's release build.
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Written with ggml's comparisons (not `f32::min`) so that NaN inputs give ggml's bytes too.
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < lo {
            lo = v;
        }
        if v > hi {
            hi = v;
        }
    }
    (lo, hi)
}

/// ggml's `MAX(a, b)`, `a > b ? a : b`, which differs from `f32::max` for NaN.
fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// The symmetric 4- and 5-bit formats map the largest-magnitude value to the most negative
/// code (-8 or -16), which has one more step than the positive side. Adding `offset + 0.5`
/// and truncating rounds to nearest (half up) in the offset domain.
fn q4_0(x: &[f32], b: &mut [u8]) {
    let d = abs_max_signed(x).1 / -8.0;
    let id = inverse(d);
    put_half(b, d);
    let q = |v: f32| (trunc_to_int(v * id + 8.5) as i8).min(15) as u8;
    for j in 0..16 {
        b[2 + j] = q(x[j]) | q(x[j + 16]) << 4;
    }
}

fn q4_1(x: &[f32], b: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    put_half(b, d);
    put_half(&mut b[2..], min);
    let q = |v: f32| (trunc_to_int((v - min) * id + 0.5) as i8).min(15) as u8;
    for j in 0..16 {
        b[4 + j] = q(x[j]) | q(x[j + 16]) << 4;
    }
}

/// Low nibbles into `qs`, fifth bits into the little-endian u32 `qh`.
fn pack_five_bit(q: impl Fn(usize) -> u8, qh: &mut [u8], qs: &mut [u8]) {
    let mut high = 0u32;
    for (j, byte) in qs[..16].iter_mut().enumerate() {
        let (lo, hi) = (q(j), q(j + 16));
        *byte = (lo & 0xF) | (hi & 0xF) << 4;
        high |= ((lo as u32 & 0x10) >> 4) << j;
        high |= ((hi as u32 & 0x10) >> 4) << (j + 16);
    }
    qh[..4].copy_from_slice(&high.to_le_bytes());
}

fn q5_0(x: &[f32], b: &mut [u8]) {
    let d = abs_max_signed(x).1 / -16.0;
    let id = inverse(d);
    put_half(b, d);
    let (qh, qs) = b[2..].split_at_mut(4);
    pack_five_bit(
        |j| (trunc_to_int(x[j] * id + 16.5) as i8).min(31) as u8,
        qh,
        qs,
    );
}

fn q5_1(x: &[f32], b: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    put_half(b, d);
    put_half(&mut b[2..], min);
    // No clamp here in ggml: (max - min) * id + 0.5 stays below 32 (31.5 at most).
    let (qh, qs) = b[4..].split_at_mut(4);
    pack_five_bit(|j| trunc_to_int((x[j] - min) * id + 0.5) as u8, qh, qs);
}

/// Q8_0 and Q8_1 share the quants: `round(x / d)` with `d = amax / 127`.
fn q8_quants(x: &[f32], qs: &mut [u8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| c_max(m, v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = trunc_to_int((v * id).round()) as u8;
    }
    d
}

fn q8_0(x: &[f32], b: &mut [u8]) {
    let d = q8_quants(x, &mut b[2..34]);
    put_half(b, d);
}

fn q8_1(x: &[f32], b: &mut [u8]) {
    let d = q8_quants(x, &mut b[4..36]);
    let sum: i32 = b[4..36].iter().map(|&q| q as i8 as i32).sum();
    put_half(b, d);
    // s = d * sum(q): the dot-product kernels use it to fold in the other operand's minimum.
    put_half(&mut b[2..], sum as f32 * d);
}

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this counts as all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

fn half_to_f32(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Pack 2-bit codes (0..4) the way Q2_K, Q3_K and TQ2_0 store them: each 128-element half
/// uses 32 bytes, and element `32s + l` of that half goes to bits `2s` of byte `l`.
fn pack_two_bit(codes: &[u8], qs: &mut [u8]) {
    for (half, out) in codes.chunks_exact(128).zip(qs.chunks_exact_mut(32)) {
        for (l, byte) in out.iter_mut().enumerate() {
            *byte = half[l] | half[l + 32] << 2 | half[l + 64] << 4 | half[l + 96] << 6;
        }
    }
}

/// Largest magnitude and the signed value that has it (the first one on ties, as in ggml).
fn abs_max_signed(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights: symmetric quants
/// in `-nmax..nmax` (stored offset by `nmax`), weighting each element by `x²`. Starting from
/// the scale that maps the largest magnitude to `-nmax`, it tries 18 nearby scales and keeps
/// the one with the best weighted least-squares fit, returning that fit's scale.
fn make_qx_quants(nmax: i32, x: &[f32], codes: &mut [u8]) -> f32 {
    let (amax, max) = abs_max_signed(x);
    if amax < GROUP_MAX_EPS {
        codes.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // The weighted sums of x·l and l² for one candidate scale, accumulated as ggml does.
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let assign = |iscale: f32, codes: &mut [u8]| {
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = (level(iscale, v) + nmax) as u8;
        }
    };
    let iscale = -nmax as f32 / max;
    assign(iscale, codes);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        // Comparing sumlx²/suml2 without dividing: that is the error reduction of the fit.
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            assign(iscale, codes);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` with `do_rmse`: symmetric quants in `-nmax..nmax`, then up to five
/// passes of coordinate descent that move one quant at a time when that improves the
/// `x²`-weighted least-squares fit. Codes are stored offset by `nmax`.
fn make_q3_quants(nmax: i32, x: &[f32], codes: &mut [u8]) -> f32 {
    let (amax, max) = abs_max_signed(x);
    if amax < GROUP_MAX_EPS {
        codes.fill(0);
        return 0.0;
    }
    let iscale = -nmax as f32 / max;
    let mut l = [0i32; 16];
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (li, &v) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        sumlx += w * v * *li as f32;
        suml2 += w * *li as f32 * *li as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let mut slx = sumlx - w * v * *li as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * *li as f32 * *li as f32;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *li {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (c, &li) in codes.iter_mut().zip(&l) {
        *c = (li + nmax) as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The search parameters of [`make_qkx2_quants`].
struct Qkx2 {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
}

/// ggml's `make_qkx2_quants`: asymmetric quants `x ≈ scale·l - min` with `l` in `0..=nmax`
/// and `min ≥ 0`. For each of `nstep + 1` candidate scales it rounds, solves the weighted
/// least-squares problem for (scale, min) in closed form, and keeps the candidate with the
/// smallest weighted error (absolute if `use_mad`, else squared). Returns (scale, min).
fn make_qkx2_quants(p: &Qkx2, x: &[f32], weights: &[f32], codes: &mut [u8]) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        codes.fill(0);
        return (0.0, -min);
    }
    let nmax = p.nmax;
    let error = |scale: f32, min: f32, codes: &[u8]| {
        let mut err = 0f32;
        for i in 0..n {
            let diff = scale * codes[i] as f32 + min - x[i];
            err += weights[i] * if p.use_mad { diff.abs() } else { diff * diff };
        }
        err
    };
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
    }
    let mut best_error = error(scale, min, codes);
    let mut aux = [0u8; 32];
    let aux = &mut aux[..n];
    for is in 0..=p.nstep {
        let iscale = (p.rmin + p.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            // The format subtracts a non-negative min; a positive fitted offset is refit as
            // a pure scale.
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error = error(this_scale, this_min, aux);
            if cur_error < best_error {
                codes.copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

fn q2_k(x: &[f32], b: &mut [u8]) {
    const Q4SCALE: f32 = 15.0;
    let params = Qkx2 {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    let mut codes = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let weights: [f32; 16] = std::array::from_fn(|l| xs[l].abs());
        (scales[j], mins[j]) =
            make_qkx2_quants(&params, xs, &weights, &mut codes[16 * j..16 * j + 16]);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let (sc, rest) = b.split_at_mut(16);
    let (qs, dd) = rest.split_at_mut(64);
    // The 4-bit sub-block scales and mins are themselves quantized against the largest.
    let mut d = 0f32;
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        d = max_scale / Q4SCALE;
    } else {
        sc.fill(0);
    }
    let mut dmin = 0f32;
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..16 {
            sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        dmin = max_min / Q4SCALE;
    }
    put_half(dd, d);
    put_half(&mut dd[2..], dmin);
    // Requantize against the scales as stored, so rounding them is compensated.
    let (d, dmin) = (half_to_f32(dd), half_to_f32(&dd[2..]));
    for (j, &s) in sc.iter().enumerate() {
        let dl = d * (s & 0xF) as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * (s >> 4) as f32;
        for i in 16 * j..16 * j + 16 {
            codes[i] = nearest_int((x[i] + ml) / dl).clamp(0, 3) as u8;
        }
    }
    pack_two_bit(&codes, qs);
}

fn q3_k(x: &[f32], b: &mut [u8]) {
    let mut codes = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut amax, mut max_scale) = (0f32, 0f32);
    for j in 0..16 {
        scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut codes[16 * j..16 * j + 16]);
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }
    let (hmask, rest) = b.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(12);
    // Sixteen 6-bit scales: low nibbles in sc[0..8] (two per byte), high 2-bit pairs in
    // sc[8..12].
    sc.fill(0);
    let mut d = 0f32;
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (j, &s) in scales.iter().enumerate() {
            // ggml stores the rounded value in an int8_t before clamping.
            let l = (nearest_int(iscale * s) as i8).clamp(-32, 31) as i32 + 32;
            sc[j % 8] |= ((l & 0xF) << (4 * (j / 8))) as u8;
            sc[8 + j % 4] |= ((l >> 4) << (2 * (j / 4))) as u8;
        }
        d = 1.0 / iscale;
    }
    put_half(dd, d);
    let d = half_to_f32(dd);
    for j in 0..16 {
        let low = (sc[j % 8] >> (4 * (j / 8))) & 0xF;
        let high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        let dl = d * ((low | high << 4) as i32 - 32) as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            codes[i] = (nearest_int(x[i] / dl).clamp(-4, 3) + 4) as u8;
        }
    }
    // The third bit of element e goes to bit e / 32 of hmask[e % 32].
    hmask.fill(0);
    for (e, c) in codes.iter_mut().enumerate() {
        if *c > 3 {
            hmask[e % 32] |= 1 << (e / 32);
            *c -= 4;
        }
    }
    pack_two_bit(&codes, qs);
}

/// Shared by Q4_K and Q5_K: eight 32-element sub-blocks, each fit by [`make_qkx2_quants`]
/// with weights `rms(x) + |x|`, then their (scale, min) pairs quantized to 6 bits against the
/// largest. Writes `d`, `dmin` and the 12 scale bytes; returns the codes, requantized against
/// the stored scales.
fn k_quants_4_5(params: &Qkx2, x: &[f32], b: &mut [u8]) -> [u8; QK_K] {
    let mut codes = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + xs[l].abs());
        (scales[j], mins[j]) =
            make_qkx2_quants(params, xs, &weights, &mut codes[32 * j..32 * j + 32]);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut b[4..16];
    for j in 0..8 {
        // ggml narrows to uint8_t before clamping to 63.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xF) | (lm & 0xF) << 4;
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    put_half(b, max_scale / 63.0);
    put_half(&mut b[2..], max_min / 63.0);
    let (d, dmin) = (half_to_f32(b), half_to_f32(&b[2..]));
    let nmax = params.nmax;
    for j in 0..8 {
        let (sc, m) = scale_min_k4(&b[4..16], j);
        let dl = d * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * m as f32;
        for i in 32 * j..32 * j + 32 {
            codes[i] = nearest_int((x[i] + ml) / dl).clamp(0, nmax) as u8;
        }
    }
    codes
}

/// The 6-bit (scale, min) of sub-block `j` in the 12 packed bytes of Q4_K/Q5_K.
fn scale_min_k4(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | (s[j - 4] >> 6) << 4,
            (s[j + 4] >> 4) | (s[j] >> 6) << 4,
        )
    }
}

fn q4_k(x: &[f32], b: &mut [u8]) {
    let params = Qkx2 {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    let codes = k_quants_4_5(&params, x, b);
    // Sub-blocks 2c and 2c+1 share the 32 bytes qs[32c..]: low nibbles, then high.
    for (pair, qs) in codes.chunks_exact(64).zip(b[16..144].chunks_exact_mut(32)) {
        for (l, q) in qs.iter_mut().enumerate() {
            *q = pair[l] | pair[l + 32] << 4;
        }
    }
}

fn q5_k(x: &[f32], b: &mut [u8]) {
    let params = Qkx2 {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    let codes = k_quants_4_5(&params, x, b);
    let (qh, qs) = b[16..176].split_at_mut(32);
    qh.fill(0);
    // As Q4_K for the low nibbles; the fifth bit of sub-block j goes to bit j of qh[l].
    for (c, (pair, qs)) in codes
        .chunks_exact(64)
        .zip(qs.chunks_exact_mut(32))
        .enumerate()
    {
        for l in 0..32 {
            let (lo, hi) = (pair[l], pair[l + 32]);
            qh[l] |= (lo >> 4) << (2 * c) | (hi >> 4) << (2 * c + 1);
            qs[l] = (lo & 0xF) | (hi & 0xF) << 4;
        }
    }
}

fn q6_k(x: &[f32], b: &mut [u8]) {
    let mut codes = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_abs, mut max_scale) = (0f32, 0f32);
    for j in 0..16 {
        scales[j] = make_qx_quants(32, &x[16 * j..16 * j + 16], &mut codes[16 * j..16 * j + 16]);
        if scales[j].abs() > max_abs {
            max_abs = scales[j].abs();
            max_scale = scales[j];
        }
    }
    if max_abs < GROUP_MAX_EPS {
        b.fill(0);
        return;
    }
    let (ql, rest) = b.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(16);
    let iscale = -128.0 / max_scale;
    put_half(dd, 1.0 / iscale);
    for (s, &scale) in sc.iter_mut().zip(&scales) {
        *s = nearest_int(iscale * scale).min(127) as i8 as u8;
    }
    let d = half_to_f32(dd);
    for (j, &s) in sc.iter().enumerate() {
        let dl = d * (s as i8) as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            codes[i] = (nearest_int(x[i] / dl).clamp(-32, 31) + 32) as u8;
        }
    }
    // Each 128-element half: low nibbles of runs 0/2 and 1/3 share ql bytes, and the top two
    // bits of all four runs share a qh byte.
    for (h, half) in codes.chunks_exact(128).enumerate() {
        let (ql, qh) = (&mut ql[64 * h..64 * h + 64], &mut qh[32 * h..32 * h + 32]);
        for l in 0..32 {
            let q = [half[l], half[l + 32], half[l + 64], half[l + 96]];
            ql[l] = (q[0] & 0xF) | (q[2] & 0xF) << 4;
            ql[l + 32] = (q[1] & 0xF) | (q[3] & 0xF) << 4;
            qh[l] = q[0] >> 4 | (q[1] >> 4) << 2 | (q[2] >> 4) << 4 | (q[3] >> 4) << 6;
        }
    }
}

fn q8_k(x: &[f32], b: &mut [u8]) {
    let (amax, max) = abs_max_signed(x);
    if amax == 0.0 {
        b.fill(0);
        return;
    }
    // -127 rather than -128, so that negating a quant never overflows in the SIMD dot
    // products ggml pairs this type with.
    let iscale = -127.0 / max;
    let (d, rest) = b.split_at_mut(4);
    let (qs, bsums) = rest.split_at_mut(QK_K);
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    for (sum, group) in bsums.chunks_exact_mut(2).zip(qs.chunks_exact(16)) {
        let s: i32 = group.iter().map(|&q| q as i8 as i32).sum();
        sum.copy_from_slice(&(s as i16).to_le_bytes());
    }
    d.copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

/// The 16 non-linear levels of IQ4_NL and IQ4_XS.
const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The index of the level of the sorted `values` nearest to `x`, ties going up. Comparing
/// `2x` with the sum of two neighbours keeps both sides exact, as ggml's binary search does.
fn best_index(values: &[i8], x: f32) -> usize {
    let x2 = x + x;
    let mut idx = 0;
    let mut step = values.len() / 2;
    while step > 0 {
        let j = idx + step;
        if x2 >= (values[j - 1] as i32 + values[j] as i32) as f32 {
            idx = j;
        }
        step /= 2;
    }
    idx
}

/// ggml's IQ4 search for one block of 32 with weights `x²` (no importance matrix): start from
/// the scale that maps the largest magnitude to the outermost level, then try `2·NTRY + 1`
/// scales around it and keep the best weighted least-squares fit. Returns the signed scale.
fn iq4_block_scale(x: &[f32]) -> f32 {
    const NTRY: i32 = 7;
    let values = &KVALUES_IQ4NL;
    let (amax, max) = abs_max_signed(x);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let sums = |id: f32| {
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for &v in x {
            let q = values[best_index(values, id * v)] as f32;
            let w = v * v;
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let d = -max / values[0] as f32;
    let (sumqx, sumq2) = sums(1.0 / d);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let (sumqx, sumq2) = sums((itry + values[0] as i32) as f32 / max);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Pack the codes of one 32-element block: element j low nibble, element j + 16 high.
fn pack_nibbles(codes: &[u8], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = codes[j] | codes[j + 16] << 4;
    }
}

/// As `ggml_quantize_chunk` does it (the search with seven tries each way); ggml's
/// `quantize_row_iq4_nl_ref` skips the search and gives different bytes.
fn iq4_nl(x: &[f32], b: &mut [u8]) {
    let d = iq4_block_scale(x);
    put_half(b, d);
    let id = inverse(d);
    let codes: [u8; 32] = std::array::from_fn(|j| best_index(&KVALUES_IQ4NL, id * x[j]) as u8);
    pack_nibbles(&codes, &mut b[2..18]);
}

fn iq4_xs(x: &[f32], b: &mut [u8]) {
    let scales: [f32; 8] = std::array::from_fn(|ib| iq4_block_scale(&x[32 * ib..32 * ib + 32]));
    let (mut amax, mut max_scale) = (0f32, 0f32);
    for &s in &scales {
        if s.abs() > amax {
            amax = s.abs();
            max_scale = s;
        }
    }
    // Block scales are 6-bit signed multiples of d, the largest mapped to -32.
    let d = -max_scale / 32.0;
    put_half(b, d);
    let id = inverse(d);
    let (mut scales_h, mut scales_l) = (0u16, [0u8; 4]);
    for (ib, &s) in scales.iter().enumerate() {
        let l = nearest_int(id * s).clamp(-32, 31);
        let idl = inverse(d * l as f32);
        let xs = &x[32 * ib..32 * ib + 32];
        let codes: [u8; 32] =
            std::array::from_fn(|j| best_index(&KVALUES_IQ4NL, idl * xs[j]) as u8);
        pack_nibbles(&codes, &mut b[8 + 16 * ib..24 + 16 * ib]);
        let l = (l + 32) as u8;
        scales_l[ib / 2] |= (l & 0xF) << (4 * (ib % 2));
        scales_h |= ((l >> 4) as u16) << (2 * ib);
    }
    b[2..4].copy_from_slice(&scales_h.to_le_bytes());
    b[4..8].copy_from_slice(&scales_l);
}

/// TQ1_0 and TQ2_0 round `x / amax` to a trit in -1..=1 with `lroundf`, stored as 0..=2.
fn trits(x: &[f32]) -> (f32, impl Fn(f32) -> u8) {
    let d = x.iter().fold(0f32, |m, v| c_max(m, v.abs()));
    let id = inverse(d);
    (d, move |v: f32| lround_to_int(v * id).wrapping_add(1) as u8)
}

fn tq1_0(x: &[f32], b: &mut [u8]) {
    let (d, trit) = trits(x);
    // Five trits per byte as a base-3 number, then scaled to a fixed-point fraction of 256
    // (rounding up) so the dequantizer can pull digits out by multiplying.
    // Digits accumulate in a u8 with wrapping, as in ggml (they only overflow for NaN input).
    let to_byte = |q: u8| (q as u16 * 256).div_ceil(243) as u8;
    let digits = |xs: &mut dyn Iterator<Item = f32>| {
        xs.fold(0u8, |q, v| q.wrapping_mul(3).wrapping_add(trit(v)))
    };
    for m in 0..32 {
        b[m] = to_byte(digits(&mut (0..5).map(|n| x[m + 32 * n])));
    }
    for m in 0..16 {
        b[32 + m] = to_byte(digits(&mut (0..5).map(|n| x[160 + m + 16 * n])));
    }
    for j in 0..4 {
        // Four trits, shifted up one digit so they sit where the dequantizer reads five.
        b[48 + j] = to_byte(digits(&mut (0..4).map(|m| x[240 + j + 4 * m])).wrapping_mul(3));
    }
    put_half(&mut b[52..], d);
}

fn tq2_0(x: &[f32], b: &mut [u8]) {
    let (d, trit) = trits(x);
    let codes: [u8; QK_K] = std::array::from_fn(|e| trit(x[e]) & 3);
    pack_two_bit(&codes, &mut b[..64]);
    put_half(&mut b[64..], d);
}

fn mxfp4(x: &[f32], b: &mut [u8]) {
    const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
    let mut amax = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
        }
    }
    // The shared exponent puts amax in the top binade of e2m1 (4..8 times the unit). ggml
    // converts through int, so a negative value wraps rather than saturating.
    let e = if amax > 0.0 {
        trunc_to_int(amax.log2().floor() - 2.0 + 127.0) as u8
    } else {
        0
    };
    let e32 = e as u32;
    // The e8m0 scale, halved because KVALUES are doubled e2m1 values.
    let d = f32::from_bits(if e32 < 2 {
        0x0020_0000 << e32
    } else {
        (e32 - 1) << 23
    });
    let nearest = |v: f32| {
        let mut best = (0, (KVALUES[0] as f32 * d - v).abs());
        for (i, &k) in KVALUES.iter().enumerate().skip(1) {
            let err = (k as f32 * d - v).abs();
            if err < best.1 {
                best = (i as u8, err);
            }
        }
        best.0
    };
    b[0] = e;
    for j in 0..16 {
        b[1 + j] = nearest(x[j]) | nearest(x[j + 16]) << 4;
    }
}

/// One sign bit per element (set for `x >= 0`) and the mean magnitude as the scale.
fn q1_0(x: &[f32], b: &mut [u8]) {
    let mut sum_abs = 0f32;
    for &v in x {
        sum_abs += v.abs();
    }
    put_half(b, sum_abs / 128.0);
    for (byte, group) in b[2..18].iter_mut().zip(x.chunks_exact(8)) {
        *byte = group
            .iter()
            .enumerate()
            .fold(0, |acc, (j, &v)| acc | ((v >= 0.0) as u8) << j);
    }
}
