//! Reductions and cumulative sums (`kernels/reduce.cu`).
//!
//! A reduction splits the input layout into two strided views, the kept dims (one position
//! per output) and the reduced dims, so every output folds a contiguous range of the reduced
//! index space. Rows of a 2-D block (256 threads) each reduce one output; the threads of a row
//! stride over the reduced range and meet through warp shuffles. The row width follows the
//! memory layout: up to 256 threads when the reduced dims are innermost, one when the kept
//! dims are (neighbouring threads then read neighbouring outputs). When there are too few
//! outputs to fill the GPU, the reduced range is split across blocks and a second kernel
//! combines the partial results in order.
//!
//! Cumsum: a warp per line when lines are contiguous in memory, a block per line when they
//! are long and few, else a thread per line (the CPU's summation order exactly).

use cudarc::driver::LaunchConfig;
use tensor_core::{DType, Error, Layout, ReduceOp, Result, Shape};

use crate::kernels::{cfg_1d, check_u32, ModuleSrc, Strided, BLOCK};
use crate::{check_layout, launch, CudaDevice, CudaStorage};

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "reduce",
    src: include_str!("../kernels/reduce.cu"),
};

/// Mode bits of the reduction kernels (the `RM_*` defines of the kernel file).
const RM_MAX: u32 = 1;
const RM_ARG: u32 = 2;
const RM_PARTIAL: u32 = 4;

/// Threads per reduction block (`RED_THREADS`).
const RED_THREADS: u32 = 256;
/// Threads per block of the long-line cumsum (`SCAN_THREADS`).
const SCAN_THREADS: u32 = 1024;
/// Bytes reserved per partial accumulator (the largest is an f64 or i64 value with a u32
/// index: 16 bytes).
const PART_BYTES: usize = 16;
/// Lines longer than this are scanned by a whole block.
const LONG_LINE: usize = 1024;

/// `(rx, oy)` block shape for reducing `red_n` elements per output: `rx` threads (a power
/// of two, about one per 8 elements) per output, `oy` outputs per block.
fn rows_shape(red_n: usize) -> (u32, u32) {
    let rx = red_n
        .div_ceil(8)
        .next_power_of_two()
        .min(RED_THREADS as usize) as u32;
    (rx, RED_THREADS / rx)
}

fn innermost_is_unit(s: &Strided) -> bool {
    s.rank == 0 || s.strides[s.rank as usize - 1] == 1
}

pub(crate) fn reduce(
    dev: &CudaDevice,
    op: ReduceOp,
    s: &CudaStorage,
    l: &Layout,
    dims: &[usize],
) -> Result<CudaStorage> {
    let name = op.name();
    check_layout(s, l, name)?;
    tensor_core::checks::reduce_dims(op, l, dims)?;
    let arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
    let (ld, ls) = (l.dims(), l.strides());
    let (mut kd, mut ks, mut rd, mut rs) = (vec![], vec![], vec![], vec![]);
    for i in 0..l.rank() {
        if dims.contains(&i) {
            rd.push(ld[i]);
            rs.push(ls[i]);
        } else {
            kd.push(ld[i]);
            ks.push(ls[i]);
        }
    }
    let out_n: usize = kd.iter().product();
    let red_n: usize = rd.iter().product();
    if red_n == 0 && out_n > 0 && op != ReduceOp::Sum {
        return Err(Error::invalid(
            name,
            format!("cannot reduce an empty dimension (shape {:?})", l.dims()),
        ));
    }
    let out_dtype = if arg { DType::I64 } else { s.dtype };
    if out_n == 0 {
        return dev.alloc(0, out_dtype);
    }
    if red_n == 0 {
        // A sum over nothing.
        return dev.zeros(out_n, out_dtype);
    }
    let out_n32 = check_u32(out_n)?;
    let red_n32 = check_u32(red_n)?;
    let kept = Layout::new(Shape::from(kd), ks, l.offset());
    let red = Layout::new(Shape::from(rd), rs, 0);
    let (kv, rv) = (Strided::new(&kept)?, Strided::new(&red)?);
    let out = dev.alloc(out_n, out_dtype)?;

    let (kind, mode) = match op {
        ReduceOp::Sum => ("sum", 0),
        ReduceOp::Max => ("ext", RM_MAX),
        ReduceOp::Min => ("ext", 0),
        ReduceOp::ArgMax => ("ext", RM_MAX | RM_ARG),
        ReduceOp::ArgMin => ("ext", RM_ARG),
    };
    // Coalesce along whichever side is innermost in memory.
    let (rx, oy) = if !innermost_is_unit(&rv) && out_n > 1 && innermost_is_unit(&kv) {
        (1, RED_THREADS)
    } else {
        rows_shape(red_n)
    };
    let tiles = out_n.div_ceil(oy as usize);
    let target = (dev.sm_count().max(1) as usize) * 8;
    let mut nsplit = 1usize;
    if tiles < target {
        // Too few outputs: split the reduced range, each part at least 64 steps of a row.
        let max_split = red_n.div_ceil(rx as usize * 64);
        nsplit = target.div_ceil(tiles).min(max_split).clamp(1, 65535);
    }
    let chunk = red_n.div_ceil(nsplit);
    nsplit = red_n.div_ceil(chunk);
    let chunk32 = check_u32(chunk)?;
    let grid_x = (tiles.min(dev.max_blocks().max(1) as usize)) as u32;
    let cfg = LaunchConfig {
        grid_dim: (grid_x, nsplit as u32, 1),
        block_dim: (rx, oy, 1),
        shared_mem_bytes: 0,
    };
    let src = s.ptr();
    let dt = s.dtype.as_str();
    let main = format!("red_{kind}_{dt}");
    if nsplit == 1 {
        let dst = out.ptr();
        launch!(dev, MODULE, &main, cfg, out_n32, red_n32, chunk32, src, kv, rv, dst, mode)?;
        return Ok(out);
    }
    let scratch = dev.alloc(out_n * nsplit * PART_BYTES, DType::U8)?;
    let (part, pmode) = (scratch.ptr(), mode | RM_PARTIAL);
    launch!(dev, MODULE, &main, cfg, out_n32, red_n32, chunk32, src, kv, rv, part, pmode)?;
    let (rx2, oy2) = rows_shape(nsplit);
    let cfg2 = LaunchConfig {
        grid_dim: (
            (out_n.div_ceil(oy2 as usize)).min(dev.max_blocks().max(1) as usize) as u32,
            1,
            1,
        ),
        block_dim: (rx2, oy2, 1),
        shared_mem_bytes: 0,
    };
    let (nsplit32, dst) = (nsplit as u32, out.ptr());
    launch!(
        dev,
        MODULE,
        &format!("red_{kind}_part_{dt}"),
        cfg2,
        out_n32,
        nsplit32,
        part,
        dst,
        mode
    )?;
    // `scratch` is released to the pool here; the next user of that memory is queued on the
    // same stream after the second pass.
    drop(scratch);
    Ok(out)
}

pub(crate) fn cumsum(
    dev: &CudaDevice,
    s: &CudaStorage,
    l: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    check_layout(s, l, "cumsum")?;
    if dim >= l.rank() {
        return Err(Error::DimOutOfRange {
            op: "cumsum",
            dim: dim as i64,
            rank: l.rank(),
            shape: l.shape().clone(),
        });
    }
    let total = l.elem_count();
    let out = dev.alloc(total, s.dtype)?;
    if total == 0 {
        return Ok(out);
    }
    check_u32(total)?;
    let (dims, strides) = (l.dims(), l.strides());
    let n = dims[dim];
    let inner: usize = dims[dim + 1..].iter().product();
    let lines = total / n;
    let mut line_dims = dims.to_vec();
    let mut line_strides = strides.to_vec();
    line_dims.remove(dim);
    line_strides.remove(dim);
    let line_l = Layout::new(Shape::from(line_dims), line_strides, l.offset());
    let (lines32, n32, inner32) = (check_u32(lines)?, check_u32(n)?, check_u32(inner)?);
    let (src, lv, sd, dst) = (
        s.ptr(),
        Strided::new(&line_l)?,
        strides[dim] as u64,
        out.ptr(),
    );
    let dt = s.dtype.as_str();
    let max_blocks = dev.max_blocks().max(1);
    // Lines contiguous in memory: a warp per line, or a block per line when they are long
    // and too few to give every SM several warps. Other lines (the scanned dim is not
    // innermost): a thread per line, neighbouring threads reading neighbouring elements
    // (coalesced, but latency-bound when there are few lines), or a block per line (every
    // load its own sector) when they are few and long. Thresholds measured on an H100.
    let contiguous_lines = inner == 1 && sd == 1;
    let sms = dev.sm_count().max(1) as usize;
    let few_lines = lines < sms * if contiguous_lines { 8 } else { 16 };
    let (kind, cfg) = if n > LONG_LINE && few_lines {
        let cfg = LaunchConfig {
            grid_dim: (lines32.min(max_blocks), 1, 1),
            block_dim: (SCAN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        ("cumsum_block", cfg)
    } else if contiguous_lines {
        let warps_per_block = (BLOCK / 32) as usize;
        let blocks = lines.div_ceil(warps_per_block).min(max_blocks as usize) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        ("cumsum_warp", cfg)
    } else {
        ("cumsum", cfg_1d(lines32, max_blocks))
    };
    launch!(
        dev,
        MODULE,
        &format!("{kind}_{dt}"),
        cfg,
        lines32,
        n32,
        inner32,
        src,
        lv,
        sd,
        dst
    )?;
    Ok(out)
}
