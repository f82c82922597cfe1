//! Kernels for the k-quants (Q2_K..Q6_K) and IQ4_XS against [`BlockQ8K`] activations.
//!
//! Every type has a scalar reference ([`Fmt::dot`]: integer dot products per 16- or 32-weight
//! group, scaled by the group's scale, with the per-group minimums or offsets folded in
//! through the activations' group sums, as ggml's generic `ggml_vec_dot_qX_K_q8_K`) and, on
//! x86-64, AVX2 and AVX-512 (with and without VNNI) versions chosen at run time.
//!
//! The SIMD kernels share one shape. A weight block is decoded, a chunk of 32 or 64 weights
//! at a time, into unsigned 8-bit quants in activation order; integer products with the
//! activations (`maddubs`, or VNNI's `dpbusd`) are multiplied by the groups' 16-bit scales
//! (`madd`) into 32-bit sums. Offsets (Q3_K's −4, Q6_K's −32) are subtracted through the
//! group sums in the same integer sum; minimums (Q2_K, Q4_K, Q5_K, scaled by `dmin`, not `d`)
//! in f32. IQ4_XS's signed values are taken as magnitudes, their signs moved onto the
//! activations. When there are several columns, each decoded chunk of a weight block serves
//! up to four columns before the next is decoded (a 1 × 4 register tile), and rows are walked
//! in panels that stay in cache while every column tile passes over them.

use super::act::{f16_at, BlockQ8K};
use super::{Kernel, Path};
use tensor_core::quant::GgmlType;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Weights per k-quant block (and per [`BlockQ8K`]).
const QK_K: usize = 256;

/// How a format's per-group minimums or offsets enter the product.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Min {
    /// Signed values, nothing to subtract (IQ4_XS).
    None,
    /// A constant offset times the group's own scale, subtracted in the integer sum through
    /// `m16` (Q3_K, Q6_K).
    Int,
    /// A separate minimum per group, scaled by `dmin` (Q2_K, Q4_K, Q5_K).
    Float,
}

/// A weight format: its block size and scalar reference.
trait Fmt {
    /// Bytes per block of 256 weights.
    const SIZE: usize;
    const MIN: Min;
    /// Whether the decoded quants carry signs that must move onto the activations.
    const SIGNED: bool = false;
    /// Weights per scale: 16 or 32.
    const GROUP: usize;
    /// `Σ w·a` over one block (`b` is exactly one block).
    fn dot(b: &[u8], a: &BlockQ8K) -> f32;
}

struct Q2K;
struct Q3K;
struct Q4K;
struct Q5K;
struct Q6K;
struct IQ4XS;

/// The IQ4_NL / IQ4_XS code book.
const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Magnitudes of [`KVALUES_IQ4NL`]; the first eight entries are the negative ones.
#[cfg(target_arch = "x86_64")]
const ABS_IQ4NL: [u8; 16] = [
    127, 104, 83, 65, 49, 35, 22, 10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The eight 6-bit scales and the eight 6-bit minimums of Q4_K/Q5_K, unpacked from their
/// 12 bytes into one byte each (scale `j` in byte `j` of the first word, minimum `j` in byte
/// `j` of the second), with ggml's 32-bit masks.
#[inline(always)]
fn k4_scales(s: &[u8; 12]) -> (u64, u64) {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a, b, c) = (w(0), w(1), w(2));
    let sc = (a & K1) as u64 | (((c & K2) | ((a >> 6) & K3) << 4) as u64) << 32;
    let mn = (b & K1) as u64 | ((((c >> 4) & K2) | ((b >> 6) & K3) << 4) as u64) << 32;
    (sc, mn)
}

/// The sixteen 6-bit scales of Q3_K (still biased by 32), one per byte: scale `s` is byte
/// `s % 4` of word `s / 4`.
#[inline(always)]
fn q3_scales(s: &[u8; 12]) -> [u32; 4] {
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a0, a1, a2) = (w(0), w(1), w(2));
    [
        (a0 & K2) | (a2 & K3) << 4,
        (a1 & K2) | ((a2 >> 2) & K3) << 4,
        ((a0 >> 4) & K2) | ((a2 >> 4) & K3) << 4,
        ((a1 >> 4) & K2) | ((a2 >> 6) & K3) << 4,
    ]
}

/// The eight 6-bit scales of IQ4_XS (still biased by 32), scale `ib` in byte `ib`: low
/// nibbles from `scales_l`, two high bits each from `scales_h`, spread with shifts and masks.
#[inline(always)]
fn iq4xs_scales(scales_h: u16, scales_l: [u8; 4]) -> u64 {
    let mut x = u32::from_le_bytes(scales_l) as u64;
    x = (x | x << 16) & 0x0000_ffff_0000_ffff;
    x = (x | x << 8) & 0x00ff_00ff_00ff_00ff;
    x = (x | x << 4) & 0x0f0f_0f0f_0f0f_0f0f;
    let mut h = scales_h as u64;
    h = (h | h << 24) & 0x0000_00ff_0000_00ff;
    h = (h | h << 12) & 0x000f_000f_000f_000f;
    h = (h | h << 6) & 0x0303_0303_0303_0303;
    x | h << 4
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    b[..N]
        .try_into()
        .expect("block slices are sized by the type table")
}

/// `Σ q·a` over 16 quants given by `q(l)` and the activations `a`.
#[inline(always)]
fn dot16(a: &[i8], q: impl Fn(usize) -> i32) -> i32 {
    a[..16]
        .iter()
        .enumerate()
        .map(|(l, &x)| q(l) * x as i32)
        .sum()
}

impl Fmt for Q2K {
    const GROUP: usize = 16;
    const SIZE: usize = 84;
    const MIN: Min = Min::Float;
    fn dot(b: &[u8], a: &BlockQ8K) -> f32 {
        let (scales, qs) = (&b[..16], &b[16..80]);
        let (d, dmin) = (f16_at(&b[80..]), f16_at(&b[82..]));
        let (mut isum, mut imin) = (0i32, 0i32);
        for (g, &sc) in scales.iter().enumerate() {
            // Group g: half g / 8 of the block, bit pair (g % 8) / 2, bytes 16 (g % 2)...
            let (base, shift) = ((g / 8) * 32 + (g % 2) * 16, 2 * ((g % 8) / 2));
            let dot = dot16(&a.qs[16 * g..], |l| ((qs[base + l] >> shift) & 3) as i32);
            isum += (sc & 0xF) as i32 * dot;
            imin += (sc >> 4) as i32 * a.bsums[g] as i32;
        }
        a.d * (d * isum as f32 - dmin * imin as f32)
    }
}

impl Fmt for Q3K {
    const GROUP: usize = 16;
    const SIZE: usize = 110;
    const MIN: Min = Min::Int;
    fn dot(b: &[u8], a: &BlockQ8K) -> f32 {
        let (hmask, qs) = (&b[..32], &b[32..96]);
        let scales = q3_scales(&arr(&b[96..108]));
        let d = f16_at(&b[108..]);
        let mut isum = 0i32;
        for g in 0..16 {
            let sc = (scales[g / 4] >> (8 * (g % 4))) as u8 as i32 - 32;
            let (base, shift, hbit) = ((g / 8) * 32 + (g % 2) * 16, 2 * ((g % 8) / 2), g / 2);
            let dot = dot16(&a.qs[16 * g..], |l| {
                let low = ((qs[base + l] >> shift) & 3) as i32;
                // A clear high bit means "subtract 4".
                let high = (hmask[(g % 2) * 16 + l] >> hbit) & 1;
                low - 4 * (1 - high as i32)
            });
            isum += sc * dot;
        }
        a.d * d * isum as f32
    }
}

/// Q4_K and Q5_K: the product of one block, given the quant of element `l` of sub-block `j`.
#[inline(always)]
fn dot_k4(b: &[u8], a: &BlockQ8K, q: impl Fn(usize, usize) -> i32) -> f32 {
    let (d, dmin) = (f16_at(b), f16_at(&b[2..]));
    let (sc, mn) = k4_scales(&arr(&b[4..16]));
    let (mut isum, mut imin) = (0i32, 0i32);
    for j in 0..8 {
        let dot: i32 = (0..32).map(|l| q(j, l) * a.qs[32 * j + l] as i32).sum();
        isum += (sc >> (8 * j)) as u8 as i32 * dot;
        let bsum = a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32;
        imin += (mn >> (8 * j)) as u8 as i32 * bsum;
    }
    a.d * (d * isum as f32 - dmin * imin as f32)
}

impl Fmt for Q4K {
    const GROUP: usize = 32;
    const SIZE: usize = 144;
    const MIN: Min = Min::Float;
    fn dot(b: &[u8], a: &BlockQ8K) -> f32 {
        let qs = &b[16..144];
        dot_k4(b, a, |j, l| {
            ((qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0xF) as i32
        })
    }
}

impl Fmt for Q5K {
    const GROUP: usize = 32;
    const SIZE: usize = 176;
    const MIN: Min = Min::Float;
    fn dot(b: &[u8], a: &BlockQ8K) -> f32 {
        let (qh, qs) = (&b[16..48], &b[48..176]);
        dot_k4(b, a, |j, l| {
            let low = (qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0xF;
            (low | ((qh[l] >> j) & 1) << 4) as i32
        })
    }
}

impl Fmt for Q6K {
    const GROUP: usize = 16;
    const SIZE: usize = 210;
    const MIN: Min = Min::Int;
    fn dot(b: &[u8], a: &BlockQ8K) -> f32 {
        let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
        let d = f16_at(&b[208..]);
        let mut isum = 0i32;
        for (g, &sc) in scales.iter().enumerate() {
            // Group g: half h, 16-element run r0 within the half's 128 elements.
            let (h, r0) = (g / 8, 16 * (g % 8));
            let dot = dot16(&a.qs[16 * g..], |l| {
                let r = r0 + l;
                let low = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0xF;
                let high = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
                (low | high << 4) as i32 - 32
            });
            isum += sc as i8 as i32 * dot;
        }
        a.d * d * isum as f32
    }
}

impl Fmt for IQ4XS {
    const GROUP: usize = 32;
    const SIZE: usize = 136;
    const MIN: Min = Min::None;
    const SIGNED: bool = true;
    fn dot(b: &[u8], a: &BlockQ8K) -> f32 {
        let d = f16_at(b);
        let scales = iq4xs_scales(u16::from_le_bytes(arr(&b[2..])), arr(&b[4..8]));
        let qs = &b[8..136];
        let mut isum = 0i32;
        for ib in 0..8 {
            let ls = (scales >> (8 * ib)) as u8 as i32 - 32;
            let (q, x) = (&qs[16 * ib..16 * ib + 16], &a.qs[32 * ib..32 * ib + 32]);
            let kv = |v: u8| KVALUES_IQ4NL[v as usize] as i32;
            let dot: i32 = (0..16)
                .map(|j| kv(q[j] & 0xF) * x[j] as i32 + kv(q[j] >> 4) * x[j + 16] as i32)
                .sum();
            isum += ls * dot;
        }
        a.d * d * isum as f32
    }
}

/// One validated product: `nb` blocks per row, slices long enough for `nr` rows, `nc`
/// columns and the output stride (checked by [`job`]).
struct Job<'a> {
    nb: usize,
    w: &'a [u8],
    nr: usize,
    a: &'a [BlockQ8K],
    nc: usize,
    out: &'a mut [f32],
    ldo: usize,
}

/// Check a [`super::GemmFn`] call's operands: whatever `n` is, a kernel given the returned
/// job reads only inside `w` and `a` and writes only inside `out`.
fn job<'a, T: Fmt>(
    n: usize,
    w: &'a [u8],
    nr: usize,
    a: &'a [BlockQ8K],
    nc: usize,
    out: &'a mut [f32],
    ldo: usize,
) -> Job<'a> {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "k-quant rows hold whole blocks, n = {n}"
    );
    let nb = n / QK_K;
    let wlen = nb.checked_mul(T::SIZE).and_then(|r| r.checked_mul(nr));
    assert!(
        wlen.is_some_and(|l| l <= w.len()),
        "k-quant product: {nr} rows of {n} weights need more than {} bytes",
        w.len()
    );
    assert!(
        nb.checked_mul(nc).is_some_and(|l| l <= a.len()),
        "k-quant product: {nc} columns of {n} activations need more than {} blocks",
        a.len()
    );
    let olen = (nc.max(1) - 1)
        .checked_mul(ldo)
        .and_then(|o| o.checked_add(nr));
    assert!(
        nr == 0 || nc == 0 || olen.is_some_and(|l| l <= out.len()),
        "k-quant product: output of {} for {nr} × {nc} with stride {ldo}",
        out.len()
    );
    debug_assert!(
        nc <= 1 || ldo >= nr,
        "output columns overlap: ldo {ldo} < nr {nr}"
    );
    Job {
        nb,
        w,
        nr,
        a,
        nc,
        out,
        ldo,
    }
}

fn scalar<T: Fmt>(
    n: usize,
    w: &[u8],
    nr: usize,
    a: &[BlockQ8K],
    nc: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let j = job::<T>(n, w, nr, a, nc, out, ldo);
    if j.nb == 0 {
        for c in 0..j.nc {
            j.out[c * j.ldo..c * j.ldo + j.nr].fill(0.0);
        }
        return;
    }
    let row = j.nb * T::SIZE;
    for (r, wr) in j.w.chunks_exact(row).take(j.nr).enumerate() {
        for (c, ac) in j.a.chunks_exact(j.nb).take(j.nc).enumerate() {
            let blocks = wr.chunks_exact(T::SIZE).zip(ac);
            j.out[c * j.ldo + r] = blocks.map(|(b, x)| T::dot(b, x)).sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn run_avx2<T: avx2::Kind>(
    n: usize,
    w: &[u8],
    nr: usize,
    a: &[BlockQ8K],
    nc: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let j = job::<T>(n, w, nr, a, nc, out, ldo);
    assert!(super::features().avx2, "AVX2 kernel on a CPU without AVX2");
    // SAFETY: the CPU has AVX2, FMA and F16C (checked above) and `job` checked the operands.
    unsafe { avx2::gemm::<T>(j) }
}

#[cfg(target_arch = "x86_64")]
fn run_avx512<T: avx512::Kind>(
    n: usize,
    w: &[u8],
    nr: usize,
    a: &[BlockQ8K],
    nc: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let j = job::<T>(n, w, nr, a, nc, out, ldo);
    assert!(
        super::features().avx512,
        "AVX-512 kernel on a CPU without AVX-512BW/VL"
    );
    // SAFETY: the CPU has AVX-512F/BW/VL, AVX2, FMA and F16C (checked above) and `job`
    // checked the operands.
    unsafe { avx512::gemm::<T>(j) }
}

#[cfg(target_arch = "x86_64")]
fn run_avx512vnni<T: avx512::Kind>(
    n: usize,
    w: &[u8],
    nr: usize,
    a: &[BlockQ8K],
    nc: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let j = job::<T>(n, w, nr, a, nc, out, ldo);
    assert!(
        super::features().avx512vnni,
        "VNNI kernel on a CPU without AVX-512 VNNI"
    );
    // SAFETY: the CPU has AVX-512F/BW/VL/VNNI, AVX2, FMA and F16C (checked above) and `job`
    // checked the operands.
    unsafe { avx512::gemm_vnni::<T>(j) }
}

/// The SIMD implementations a format needs on this architecture.
#[cfg(target_arch = "x86_64")]
trait Simd: avx2::Kind + avx512::Kind {}
#[cfg(target_arch = "x86_64")]
impl<T: avx2::Kind + avx512::Kind> Simd for T {}
#[cfg(not(target_arch = "x86_64"))]
trait Simd {}
#[cfg(not(target_arch = "x86_64"))]
impl<T> Simd for T {}

fn paths_of<T: Fmt + Simd>() -> Vec<Path> {
    let mut v = vec![Path {
        name: "scalar",
        kernel: Kernel::Q8K(scalar::<T>),
    }];
    #[cfg(target_arch = "x86_64")]
    {
        let f = super::features();
        let simd = [
            (f.avx2, "avx2", run_avx2::<T> as super::GemmFn<BlockQ8K>),
            (f.avx512, "avx512", run_avx512::<T>),
            (f.avx512vnni, "avx512vnni", run_avx512vnni::<T>),
        ];
        for (_, name, k) in simd.into_iter().filter(|s| s.0) {
            v.push(Path {
                name,
                kernel: Kernel::Q8K(k),
            });
        }
    }
    v
}

pub(super) fn paths(ty: GgmlType) -> Vec<Path> {
    match ty {
        GgmlType::Q2_K => paths_of::<Q2K>(),
        GgmlType::Q3_K => paths_of::<Q3K>(),
        GgmlType::Q4_K => paths_of::<Q4K>(),
        GgmlType::Q5_K => paths_of::<Q5K>(),
        GgmlType::Q6_K => paths_of::<Q6K>(),
        GgmlType::IQ4_XS => paths_of::<IQ4XS>(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing::{check_paths, random_acts, random_blocks};
    use crate::quant::{quantize_q8k, GemmFn};

    const TYPES: [GgmlType; 6] = [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_XS,
    ];

    fn q8k(f: Kernel) -> GemmFn<BlockQ8K> {
        match f {
            Kernel::Q8K(f) => f,
            Kernel::Q8(_) => panic!("k-quant kernels take BlockQ8K activations"),
        }
    }

    #[test]
    fn sizes_match_the_type_table() {
        assert_eq!(Q2K::SIZE, GgmlType::Q2_K.type_size());
        assert_eq!(Q3K::SIZE, GgmlType::Q3_K.type_size());
        assert_eq!(Q4K::SIZE, GgmlType::Q4_K.type_size());
        assert_eq!(Q5K::SIZE, GgmlType::Q5_K.type_size());
        assert_eq!(Q6K::SIZE, GgmlType::Q6_K.type_size());
        assert_eq!(IQ4XS::SIZE, GgmlType::IQ4_XS.type_size());
    }

    /// Every path this CPU should have is there, so the comparisons below run the SIMD code.
    #[test]
    fn simd_paths_are_listed() {
        let f = crate::quant::features();
        for ty in TYPES {
            let names: Vec<_> = paths(ty).iter().map(|p| p.name).collect();
            let mut want = vec!["scalar"];
            want.extend(
                [
                    (f.avx2, "avx2"),
                    (f.avx512, "avx512"),
                    (f.avx512vnni, "avx512vnni"),
                ]
                .into_iter()
                .filter(|p| p.0)
                .map(|p| p.1),
            );
            assert_eq!(names, want, "{ty}");
        }
        // Independently of `features()`: a CPU with AVX-512 VNNI runs all four paths here.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
        {
            assert_eq!(paths(GgmlType::Q4_K).len(), 4);
        }
    }

    #[test]
    fn q2_k_paths() {
        check_paths(GgmlType::Q2_K, 1e-5);
    }

    #[test]
    fn q3_k_paths() {
        check_paths(GgmlType::Q3_K, 1e-5);
    }

    #[test]
    fn q4_k_paths() {
        check_paths(GgmlType::Q4_K, 1e-5);
    }

    #[test]
    fn q5_k_paths() {
        check_paths(GgmlType::Q5_K, 1e-5);
    }

    #[test]
    fn q6_k_paths() {
        check_paths(GgmlType::Q6_K, 1e-5);
    }

    #[test]
    fn iq4_xs_paths() {
        check_paths(GgmlType::IQ4_XS, 1e-5);
    }

    /// Enough rows and columns for several row panels and column tiles (with a remainder),
    /// extreme quants included: every path agrees with the scalar one.
    #[test]
    fn panels_and_tiles_agree() {
        let (nb, nr, nc) = (40, 23, 11);
        let n = nb * QK_K;
        let mut x = random_acts(n, nc, 5);
        // Saturate a few activations so that ±127 quants occur.
        for v in x.iter_mut().step_by(97) {
            *v = if *v < 0.0 { -50.0 } else { 50.0 };
        }
        let mut a = vec![BlockQ8K::default(); nb * nc];
        quantize_q8k(&x, &mut a);
        for ty in TYPES {
            let mut w = random_blocks(ty, nb * nr, 3);
            // All-ones quant bytes in a few blocks: the largest unsigned quants.
            for b in w.chunks_exact_mut(ty.type_size()).step_by(7) {
                let keep: Vec<u8> = b.to_vec();
                b.fill(0xFF);
                // Keep the f16 scales finite (the offsets of check's random blocks).
                for &o in scale_offsets(ty) {
                    b[o..o + 2].copy_from_slice(&keep[o..o + 2]);
                }
            }
            let all = paths(ty);
            let ldo = nr + 3;
            let run = |f: GemmFn<BlockQ8K>| {
                let mut out = vec![f32::NAN; ldo * nc];
                f(n, &w, nr, &a, nc, &mut out, ldo);
                out
            };
            // Σ |w·a| per output, the scale of the rounding differences.
            let wd = tensor_core::quant::dequantize(ty, &w).unwrap();
            let xd: Vec<f32> = a
                .iter()
                .flat_map(|b| b.qs.map(|q| q as f32 * b.d))
                .collect();
            let mag = |r: usize, c: usize| -> f32 {
                let (wr, xc) = (&wd[r * n..(r + 1) * n], &xd[c * n..(c + 1) * n]);
                wr.iter().zip(xc).map(|(u, v)| (u * v).abs()).sum()
            };
            let reference = run(q8k(all[0].kernel));
            for p in &all[1..] {
                let got = run(q8k(p.kernel));
                for c in 0..nc {
                    for r in 0..nr {
                        let (g, s) = (got[c * ldo + r], reference[c * ldo + r]);
                        assert!(
                            (g - s).abs() <= 1e-5 * mag(r, c) + 1e-6,
                            "{ty} {} r={r} c={c}: {g} vs scalar {s} (|terms| {})",
                            p.name,
                            mag(r, c)
                        );
                    }
                    assert!(
                        got[c * ldo + nr].is_nan(),
                        "{ty} {}: wrote past its rows",
                        p.name
                    );
                }
            }
        }
    }

    /// Byte offsets of the f16 factors in a block.
    fn scale_offsets(ty: GgmlType) -> &'static [usize] {
        match ty {
            GgmlType::Q2_K => &[80, 82],
            GgmlType::Q3_K => &[108],
            GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            GgmlType::Q6_K => &[208],
            _ => &[0],
        }
    }

    /// Too-short operands are refused before any kernel reads them.
    #[test]
    fn short_operands_panic() {
        for ty in TYPES {
            for p in paths(ty) {
                let f = q8k(p.kernel);
                let w = vec![0u8; ty.type_size() * 2];
                let a = vec![BlockQ8K::default(); 2];
                let short_w = std::panic::catch_unwind(|| {
                    let mut out = vec![0f32; 4];
                    f(256, &w, 3, &a, 1, &mut out, 3);
                });
                assert!(short_w.is_err(), "{ty} {}: 3 rows from 2 blocks", p.name);
                let short_a = std::panic::catch_unwind(|| {
                    let mut out = vec![0f32; 8];
                    f(256, &w, 2, &a, 3, &mut out, 2);
                });
                assert!(short_a.is_err(), "{ty} {}: 3 columns from 2 blocks", p.name);
                let short_out = std::panic::catch_unwind(|| {
                    let mut out = vec![0f32; 3];
                    f(256, &w, 2, &a, 2, &mut out, 2);
                });
                assert!(short_out.is_err(), "{ty} {}: 2 × 2 into 3", p.name);
            }
        }
    }

    /// Nanoseconds this thread has spent on a CPU (`/proc/thread-self/schedstat`), so that
    /// timings on a shared machine leave out the time other processes ran; wall time where
    /// that file is missing.
    fn cpu_ns(wall: std::time::Instant) -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| wall.elapsed().as_nanos() as u64)
    }

    /// Single-thread throughput of the SIMD paths, in GB/s of weights streamed per second of
    /// CPU time (matrix-vector products, then a 4-column tile). Run with
    /// `cargo test --release -p tensor-cpu --lib kquants::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let epoch = std::time::Instant::now();
        for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
            for &(nr, n) in &[(576, 1536), (1536, 512), (49152, 768)] {
                let w = random_blocks(ty, n / QK_K * nr, 1);
                for nc in [1, 4] {
                    let x = random_acts(n, nc, 2);
                    let mut a = vec![BlockQ8K::default(); n / QK_K * nc];
                    quantize_q8k(&x, &mut a);
                    let mut out = vec![0f32; nr * nc];
                    for p in &paths(ty)[1..] {
                        let f = q8k(p.kernel);
                        let t0 = std::time::Instant::now();
                        f(n, &w, nr, &a, nc, &mut out, nr);
                        let once = t0.elapsed().as_nanos().max(100) as u64;
                        // About 0.2 s per measurement (the CPU-time counter moves in
                        // scheduler ticks), best of three.
                        let reps = (200_000_000 / once).clamp(1, 1_000_000);
                        let mut best = f64::INFINITY;
                        for _ in 0..3 {
                            let t = cpu_ns(epoch);
                            for _ in 0..reps {
                                f(n, &w, nr, &a, nc, &mut out, nr);
                                std::hint::black_box(&mut out);
                            }
                            best = best.min((cpu_ns(epoch) - t) as f64 * 1e-9 / reps as f64);
                        }
                        println!(
                            "{ty} {nr}x{n} nc={nc} {:>10}: {:8.1} us  {:6.2} GB/s of weights",
                            p.name,
                            best * 1e6,
                            w.len() as f64 / best / 1e9
                        );
                    }
                }
            }
        }
    }
}
