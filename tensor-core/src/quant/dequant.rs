//! Scalar reference dequantization of ggml blocks to f32, for every type a GGUF file may hold.
//!
//! Each format is written from its block layout (ggml's `ggml-common.h`) and computes every
//! value with the same f32 operations in the same order as `gguf.quants.dequantize` of the
//! `gguf` Python package, so results are bit-identical to it, and to ggml's `dequantize_row_*`
//! (the fixtures of tests/quant.rs check both). Q8_1, Q8_K and Q1_0 have no Python
//! dequantizer; they follow ggml. The i-quant grids are generated data (iq_grids.rs). Speed is
//! a later concern: fast kernels go to the backends.

use crate::{bf16, f16, Error, Result};

use super::iq_grids::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
use super::types::{GgmlType, QK_K};

/// Dequantize `data`, a whole number of `ty` blocks, into `out`, which must have room for
/// exactly the elements those blocks hold.
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let (block, size) = (ty.block_size(), ty.type_size());
    if !out.len().is_multiple_of(block) || data.len() != out.len() / block * size {
        return Err(Error::msg(format!(
            "dequantize {ty}: {} bytes do not hold {} elements ({} per block of {size} bytes)",
            data.len(),
            out.len(),
            block
        )));
    }
    let kernel: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes(arr(b)),
        GgmlType::F16 => |b, y| y[0] = half(b),
        GgmlType::BF16 => |b, y| y[0] = bf16::from_bits(u16::from_le_bytes(arr(b))).to_f32(),
        GgmlType::F64 => |b, y| y[0] = f64::from_le_bytes(arr(b)) as f32,
        GgmlType::I8 => |b, y| y[0] = b[0] as i8 as f32,
        GgmlType::I16 => |b, y| y[0] = i16::from_le_bytes(arr(b)) as f32,
        GgmlType::I32 => |b, y| y[0] = i32::from_le_bytes(arr(b)) as f32,
        GgmlType::I64 => |b, y| y[0] = i64::from_le_bytes(arr(b)) as f32,
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
        GgmlType::NVFP4 => nvfp4,
        GgmlType::Q1_0 => q1_0,
        GgmlType::IQ2_XXS => iq2_xxs,
        GgmlType::IQ2_XS => iq2_xs,
        GgmlType::IQ2_S => iq2_s,
        GgmlType::IQ3_XXS => iq3_xxs,
        GgmlType::IQ3_S => iq3_s,
        GgmlType::IQ1_S => iq1_s,
        GgmlType::IQ1_M => iq1_m,
    };
    for (b, y) in data.chunks_exact(size).zip(out.chunks_exact_mut(block)) {
        kernel(b, y);
    }
    Ok(())
}

/// Dequantize `data`, a whole number of `ty` blocks, into a new vector.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>> {
    let blocks = data.len() / ty.type_size();
    let mut out = vec![0f32; blocks * ty.block_size()];
    dequantize_into(ty, data, &mut out)?;
    Ok(out)
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    b[..N]
        .try_into()
        .expect("block slices are sized by the type table")
}

fn half(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes(arr(b))).to_f32()
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half(b);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * ((q & 0xF) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b), half(&b[2..]));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = d * (q & 0xF) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// The 5-bit quants of Q5_0/Q5_1: low nibbles from `qs`, fifth bits from the u32 `qh`.
fn five_bit(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes(arr(qh));
    let mut q = [0u8; 32];
    for (j, &byte) in qs[..16].iter().enumerate() {
        q[j] = (byte & 0xF) | (((qh >> j) & 1) as u8) << 4;
        q[j + 16] = (byte >> 4) | (((qh >> (j + 16)) & 1) as u8) << 4;
    }
    q
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = half(b);
    for (y, q) in y.iter_mut().zip(five_bit(&b[2..6], &b[6..22])) {
        *y = d * (q as i32 - 16) as f32;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b), half(&b[2..]));
    for (y, q) in y.iter_mut().zip(five_bit(&b[4..8], &b[8..24])) {
        *y = d * q as f32 + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half(b);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = q as i8 as f32 * d;
    }
}

fn q8_1(b: &[u8], y: &mut [f32]) {
    // b[2..4] holds s = d * sum(q), only a shortcut for dot products.
    let d = half(b);
    for (y, &q) in y.iter_mut().zip(&b[4..36]) {
        *y = q as i8 as f32 * d;
    }
}

/// The 2-bit field of element `e` (0..256) when four fields share a byte of a 64-byte `qs`:
/// each half of the block uses 32 bytes, shifted by 0, 2, 4, 6 for consecutive runs of 32.
fn two_bit(qs: &[u8], e: usize) -> u8 {
    let (half, shift, l) = (e / 128, (e % 128) / 32, e % 32);
    (qs[half * 32 + l] >> (2 * shift)) & 3
}

fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (half(&b[80..]), half(&b[82..]));
    for (e, y) in y.iter_mut().enumerate() {
        let sc = scales[e / 16];
        let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
        *y = dl * two_bit(qs, e) as f32 - ml;
    }
}

fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, sc) = (&b[..32], &b[32..96], &b[96..108]);
    let d = half(&b[108..]);
    for s in 0..16 {
        let low = (sc[s % 8] >> (4 * (s / 8))) & 0xF;
        let high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
        let dl = d * ((low | high << 4) as i8 - 32) as f32;
        for e in s * 16..s * 16 + 16 {
            // A clear high bit means "subtract 4": the stored bit is the complement.
            let hbit = (hmask[e % 32] >> (e / 32)) & 1;
            let q = two_bit(qs, e) as i8 - (((hbit ^ 1) << 2) as i8);
            y[e] = dl * q as f32;
        }
    }
}

/// The eight 6-bit (scale, min) pairs of Q4_K/Q5_K, packed in 12 bytes.
fn scale_min_k4(s: &[u8]) -> [(u8, u8); 8] {
    let mut out = [(0, 0); 8];
    for j in 0..4 {
        out[j] = (s[j] & 0x3F, s[j + 4] & 0x3F);
        out[j + 4] = (
            (s[j + 8] & 0xF) | ((s[j] >> 2) & 0x30),
            (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30),
        );
    }
    out
}

/// The low nibble of element `l` of sub-block `j` (0..8) in the 128-byte `qs` of Q4_K/Q5_K:
/// sub-blocks 2c and 2c+1 share the 32 bytes `qs[32c..]`, low then high nibbles.
fn nibble_k(qs: &[u8], j: usize, l: usize) -> u8 {
    (qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0xF
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b), half(&b[2..]));
    let qs = &b[16..144];
    for (j, (sc, m)) in scale_min_k4(&b[4..16]).into_iter().enumerate() {
        let (dl, ml) = (d * sc as f32, dmin * m as f32);
        for l in 0..32 {
            y[j * 32 + l] = dl * nibble_k(qs, j, l) as f32 - ml;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b), half(&b[2..]));
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (j, (sc, m)) in scale_min_k4(&b[4..16]).into_iter().enumerate() {
        let (dl, ml) = (d * sc as f32, dmin * m as f32);
        for l in 0..32 {
            let q = nibble_k(qs, j, l) | ((qh[l] >> j) & 1) << 4;
            y[j * 32 + l] = dl * q as f32 - ml;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = half(&b[208..]);
    for (e, y) in y.iter_mut().enumerate() {
        let dl = d * (scales[e / 16] as i8) as f32;
        // Low nibbles: each half of the block uses 64 bytes, low nibbles then high nibbles.
        let (h, r) = (e / 128, e % 128);
        let low = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0xF;
        let q = (low | two_bit(qh, e) << 4) as i8 - 32;
        *y = dl * q as f32;
    }
}

fn q8_k(b: &[u8], y: &mut [f32]) {
    // b[260..292] holds 16 i16 partial sums, only a shortcut for dot products.
    let d = f32::from_le_bytes(arr(b));
    for (y, &q) in y.iter_mut().zip(&b[4..4 + QK_K]) {
        *y = d * q as i8 as f32;
    }
}

const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = half(b);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * KVALUES_IQ4NL[(q & 0xF) as usize] as f32;
        y[j + 16] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
    }
}

fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = half(b);
    let scales_h = u16::from_le_bytes(arr(&b[2..]));
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for ib in 0..8 {
        let low = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
        let high = ((scales_h >> (2 * ib)) & 3) as u8;
        let dl = d * ((low | high << 4) as i8 - 32) as f32;
        for (j, &q) in qs[ib * 16..ib * 16 + 16].iter().enumerate() {
            y[ib * 32 + j] = dl * KVALUES_IQ4NL[(q & 0xF) as usize] as f32;
            y[ib * 32 + j + 16] = dl * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
        }
    }
}

fn tq1_0(b: &[u8], y: &mut [f32]) {
    // Five (or four, in qh) base-3 digits per byte, stored as a fixed-point fraction of 243:
    // multiplying by 3^p (mod 256) brings digit p to the top, and (x * 3) >> 8 reads it.
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let (qs, qh) = (&b[..48], &b[48..52]);
    let d = half(&b[52..]);
    let trit = |x: u8, p: usize| ((x.wrapping_mul(POW3[p]) as u16 * 3) >> 8) as i8 - 1;
    for p in 0..5 {
        for l in 0..32 {
            y[p * 32 + l] = d * trit(qs[l], p) as f32;
        }
        for l in 0..16 {
            y[160 + p * 16 + l] = d * trit(qs[32 + l], p) as f32;
        }
    }
    for p in 0..4 {
        for l in 0..4 {
            y[240 + p * 4 + l] = d * trit(qh[l], p) as f32;
        }
    }
}

fn tq2_0(b: &[u8], y: &mut [f32]) {
    let (qs, d) = (&b[..64], half(&b[64..]));
    for (e, y) in y.iter_mut().enumerate() {
        *y = d * (two_bit(qs, e) as i8 - 1) as f32;
    }
}

fn mxfp4(b: &[u8], y: &mut [f32]) {
    // e2m1 magnitudes, doubled; the shared e8m0 exponent is halved to compensate.
    const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
    let e = b[0] as u32;
    let d = f32::from_bits(if e < 2 {
        0x0020_0000 << e
    } else {
        (e - 1) << 23
    });
    for (j, &q) in b[1..17].iter().enumerate() {
        y[j] = d * KVALUES[(q & 0xF) as usize] as f32;
        y[j + 16] = d * KVALUES[(q >> 4) as usize] as f32;
    }
}

fn q1_0(b: &[u8], y: &mut [f32]) {
    // One bit per element: set means +d, clear means -d.
    let d = half(b);
    for (e, y) in y.iter_mut().enumerate() {
        *y = if (b[2 + e / 8] >> (e % 8)) & 1 != 0 {
            d
        } else {
            -d
        };
    }
}

fn nvfp4(b: &[u8], y: &mut [f32]) {
    // Four sub-blocks of 16, each with an unsigned e4m3 scale (halved, as for MXFP4).
    const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
    let (scales, qs) = (&b[..4], &b[4..36]);
    for (s, &e) in scales.iter().enumerate() {
        let d = ue4m3_half(e);
        for (j, &q) in qs[8 * s..8 * s + 8].iter().enumerate() {
            y[16 * s + j] = KVALUES[(q & 0xF) as usize] as f32 * d;
            y[16 * s + j + 8] = KVALUES[(q >> 4) as usize] as f32 * d;
        }
    }
}

/// Half the value of an unsigned e4m3 byte (bias 7); 0x7F, e4m3's NaN, reads as zero.
fn ue4m3_half(x: u8) -> f32 {
    if x == 0 || x == 0x7F {
        return 0.0;
    }
    let (exp, man) = (((x >> 3) & 0xF) as i32, (x & 7) as f32);
    let raw = if exp == 0 {
        man / 512.0
    } else {
        (1.0 + man / 8.0) * f32::from_bits(((exp - 7 + 127) as u32) << 23)
    };
    raw * 0.5
}

// The i-quants below 4 bits pick each group of 8 (or 4) values from a fixed grid
// (iq_grids.rs), so a whole group costs one index. Signs travel separately: 7 bits per group
// of 8, the eighth implied by even parity (`signs_with_parity`), except in IQ2_S/IQ3_S, which
// store all 8.

/// The 7 stored sign bits of a group with the eighth set so that the count is even.
fn signs_with_parity(bits: u32) -> u8 {
    let bits = (bits & 127) as u8;
    bits | ((bits.count_ones() as u8 & 1) << 7)
}

/// `db * grid value * (±1)` for one group, in ggml's (and gguf-py's) order.
fn put_group(y: &mut [f32], db: f32, grid: &[u8], signs: u8) {
    for (j, (y, &g)) in y.iter_mut().zip(grid).enumerate() {
        *y = db * g as f32 * if signs >> j & 1 != 0 { -1.0 } else { 1.0 };
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(arr(&b[at..]))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(arr(&b[at..]))
}

fn iq2_xxs(b: &[u8], y: &mut [f32]) {
    let d = half(b);
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        // Per 32 values: four grid indices (bytes), then 4 × 7 sign bits and a 4-bit scale.
        let (idx, meta) = (&b[2 + 8 * ib..6 + 8 * ib], u32_at(b, 6 + 8 * ib));
        let db = d * (0.5 + (meta >> 28) as f32) * 0.25;
        for (l, y) in y.chunks_exact_mut(8).enumerate() {
            let grid = IQ2XXS_GRID[idx[l] as usize].to_le_bytes();
            put_group(y, db, &grid, signs_with_parity(meta >> (7 * l)));
        }
    }
}

fn iq2_xs(b: &[u8], y: &mut [f32]) {
    let d = half(b);
    let scales = &b[66..74];
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        let sc = scales[ib];
        let db = [
            d * (0.5 + (sc & 0xF) as f32) * 0.25,
            d * (0.5 + (sc >> 4) as f32) * 0.25,
        ];
        for (l, y) in y.chunks_exact_mut(8).enumerate() {
            // 9-bit grid index, 7 sign bits.
            let q = u16_at(b, 2 + 2 * (4 * ib + l));
            let grid = IQ2XS_GRID[(q & 511) as usize].to_le_bytes();
            put_group(y, db[l / 2], &grid, signs_with_parity((q >> 9) as u32));
        }
    }
}

fn iq2_s(b: &[u8], y: &mut [f32]) {
    let d = half(b);
    let (qs, signs, qh, scales) = (&b[2..34], &b[34..66], &b[66..74], &b[74..82]);
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        let sc = scales[ib];
        let db = [
            d * (0.5 + (sc & 0xF) as f32) * 0.25,
            d * (0.5 + (sc >> 4) as f32) * 0.25,
        ];
        for (l, y) in y.chunks_exact_mut(8).enumerate() {
            // 10-bit grid index: a byte of qs and two bits of qh.
            let idx = qs[4 * ib + l] as usize | ((qh[ib] as usize >> (2 * l)) & 3) << 8;
            let grid = IQ2S_GRID[idx].to_le_bytes();
            put_group(y, db[l / 2], &grid, signs[4 * ib + l]);
        }
    }
}

fn iq3_xxs(b: &[u8], y: &mut [f32]) {
    let d = half(b);
    let (qs, meta) = (&b[2..66], &b[66..98]);
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        let meta = u32_at(meta, 4 * ib);
        let db = d * (0.5 + (meta >> 28) as f32) * 0.5;
        for (l, y) in y.chunks_exact_mut(8).enumerate() {
            // Two grid entries of 4 make a group of 8.
            let mut grid = [0u8; 8];
            grid[..4].copy_from_slice(&IQ3XXS_GRID[qs[8 * ib + 2 * l] as usize].to_le_bytes());
            grid[4..].copy_from_slice(&IQ3XXS_GRID[qs[8 * ib + 2 * l + 1] as usize].to_le_bytes());
            put_group(y, db, &grid, signs_with_parity(meta >> (7 * l)));
        }
    }
}

fn iq3_s(b: &[u8], y: &mut [f32]) {
    let d = half(b);
    let (qs, qh, signs, scales) = (&b[2..66], &b[66..74], &b[74..106], &b[106..110]);
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        let db = d * (1 + 2 * ((scales[ib / 2] >> (4 * (ib % 2))) & 0xF) as i32) as f32;
        for (l, y) in y.chunks_exact_mut(8).enumerate() {
            // 9-bit grid indices: a byte of qs and one bit of qh each.
            let entry = |k: usize| {
                let i = 2 * l + k;
                let idx = qs[8 * ib + i] as usize | ((qh[ib] as usize >> i) & 1) << 8;
                IQ3S_GRID[idx].to_le_bytes()
            };
            let mut grid = [0u8; 8];
            grid[..4].copy_from_slice(&entry(0));
            grid[4..].copy_from_slice(&entry(1));
            put_group(y, db, &grid, signs[4 * ib + l]);
        }
    }
}

/// IQ1_S/IQ1_M groups: `dl * (grid value + delta)`, grid values in -1..=1.
fn put_iq1_group(y: &mut [f32], dl: f32, idx: usize, delta: f32) {
    for (y, g) in y.iter_mut().zip(IQ1S_GRID[idx].to_le_bytes()) {
        *y = dl * (g as i8 as f32 + delta);
    }
}

const IQ1S_DELTA: f32 = 0.125;

fn iq1_s(b: &[u8], y: &mut [f32]) {
    let d = half(b);
    let qs = &b[2..34];
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        // Per 32 values, a u16: 4 × 3 high index bits, a 3-bit scale, the sign of delta.
        let qh = u16_at(b, 34 + 2 * ib);
        let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 != 0 {
            -IQ1S_DELTA
        } else {
            IQ1S_DELTA
        };
        for (l, y) in y.chunks_exact_mut(8).enumerate() {
            let idx = qs[4 * ib + l] as usize | ((qh as usize >> (3 * l)) & 7) << 8;
            put_iq1_group(y, dl, idx, delta);
        }
    }
}

fn iq1_m(b: &[u8], y: &mut [f32]) {
    let (qs, qh) = (&b[..32], &b[32..48]);
    let sc: [u16; 4] = std::array::from_fn(|k| u16_at(b, 48 + 2 * k));
    // The f16 super-block scale is spread over the top nibbles of the four scale words.
    let d_bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0xF0) | ((sc[2] >> 4) & 0xF00) | (sc[3] & 0xF000);
    let d = f16::from_bits(d_bits).to_f32();
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        let s = sc[ib / 2] >> (6 * (ib % 2));
        let dl = [
            d * (2 * (s & 7) + 1) as f32,
            d * (2 * ((s >> 3) & 7) + 1) as f32,
        ];
        for (l, y) in y.chunks_exact_mut(8).enumerate() {
            // Each qh byte serves two groups: 3 high index bits and a delta sign per nibble.
            let h = qh[2 * ib + l / 2] >> (4 * (l % 2));
            let idx = qs[4 * ib + l] as usize | ((h & 7) as usize) << 8;
            let delta = if h & 8 != 0 { -IQ1S_DELTA } else { IQ1S_DELTA };
            put_iq1_group(y, dl[l / 2], idx, delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_block_by_hand() {
        // d = 0.5, quants 0..15 then 15..0: low nibble j, high nibble 15 - j.
        let mut block = f16::from_f32(0.5).to_bits().to_le_bytes().to_vec();
        block.extend((0..16u8).map(|j| j | (15 - j) << 4));
        let y = dequantize(GgmlType::Q4_0, &block).unwrap();
        assert_eq!(y[0], -4.0);
        assert_eq!(y[15], 3.5);
        assert_eq!(y[16], 3.5);
        assert_eq!(y[31], -4.0);
    }

    #[test]
    fn sizes_are_checked() {
        let err = dequantize_into(GgmlType::Q8_0, &[0; 33], &mut [0.0; 32]).unwrap_err();
        assert!(err.to_string().contains("33 bytes"), "{err}");
        assert!(dequantize_into(GgmlType::IQ2_XXS, &[0; 65], &mut [0.0; 256]).is_err());
    }
}
