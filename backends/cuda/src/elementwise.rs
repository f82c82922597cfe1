//! Elementwise unary, binary, comparison and where kernels (`kernels/elementwise.cu`).
//!
//! One kernel per dtype and op family; the op travels as an integer code (the `U_*`, `B_*`,
//! `C_*` defines of the kernel file, kept in sync with the functions below) plus two f64
//! parameters. Semantics are the CPU backend's: f16/bf16 compute in f32 and round once,
//! integers compute exactly in their own type and wrap, integer division floors and a zero
//! divisor is an `Err`.

use tensor_core::{BinaryOp, CmpOp, DType, Error, Layout, Result, Tensor, UnaryOp};

use crate::kernels::{cfg_1d, check_u32, ModuleSrc, Strided};
use crate::{check_layout, check_same_shape, launch, with_storage, CudaDevice, CudaStorage};

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "elementwise",
    src: include_str!("../kernels/elementwise.cu"),
};

/// The integer affine op with integral coefficients (`U_AFFINE_INT`).
const U_AFFINE_INT: u32 = 27;

/// The kernel's op code of `op` and its two parameters.
fn unary_code(op: UnaryOp) -> (u32, f64, f64) {
    match op {
        UnaryOp::Neg => (0, 0.0, 0.0),
        UnaryOp::Abs => (1, 0.0, 0.0),
        UnaryOp::Sign => (2, 0.0, 0.0),
        UnaryOp::Exp => (3, 0.0, 0.0),
        UnaryOp::Log => (4, 0.0, 0.0),
        UnaryOp::Sqrt => (5, 0.0, 0.0),
        UnaryOp::Rsqrt => (6, 0.0, 0.0),
        UnaryOp::Recip => (7, 0.0, 0.0),
        UnaryOp::Sqr => (8, 0.0, 0.0),
        UnaryOp::Sin => (9, 0.0, 0.0),
        UnaryOp::Cos => (10, 0.0, 0.0),
        UnaryOp::Tanh => (11, 0.0, 0.0),
        UnaryOp::Sigmoid => (12, 0.0, 0.0),
        UnaryOp::Relu => (13, 0.0, 0.0),
        UnaryOp::Gelu => (14, 0.0, 0.0),
        UnaryOp::GeluTanh => (15, 0.0, 0.0),
        UnaryOp::Erf => (16, 0.0, 0.0),
        UnaryOp::Silu => (17, 0.0, 0.0),
        UnaryOp::Softplus => (18, 0.0, 0.0),
        UnaryOp::Floor => (19, 0.0, 0.0),
        UnaryOp::Ceil => (20, 0.0, 0.0),
        UnaryOp::Round => (21, 0.0, 0.0),
        UnaryOp::Affine { mul, add } => (22, mul, add),
        UnaryOp::Powf(e) => (23, e, 0.0),
        UnaryOp::Elu(alpha) => (24, alpha, 0.0),
        UnaryOp::LeakyRelu(slope) => (25, slope, 0.0),
        UnaryOp::Clamp { min, max } => (26, min, max),
    }
}

fn binary_code(op: BinaryOp) -> u32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Pow => 4,
        BinaryOp::Maximum => 5,
        BinaryOp::Minimum => 6,
    }
}

fn cmp_code(op: CmpOp) -> u32 {
    match op {
        CmpOp::Eq => 0,
        CmpOp::Ne => 1,
        CmpOp::Lt => 2,
        CmpOp::Le => 3,
        CmpOp::Gt => 4,
        CmpOp::Ge => 5,
    }
}

pub(crate) fn unary(
    dev: &CudaDevice,
    op: UnaryOp,
    s: &CudaStorage,
    l: &Layout,
) -> Result<CudaStorage> {
    check_layout(s, l, op.name())?;
    let dtype = s.dtype;
    if dtype.is_int() && !op.supports_int() {
        return Err(Error::UnsupportedDType {
            op: op.name(),
            dtype,
            expected: "a float dtype",
        });
    }
    let n = l.elem_count();
    let out = dev.alloc(n, dtype)?;
    if n == 0 {
        return Ok(out);
    }
    let n32 = check_u32(n)?;
    let (mut code, p0, p1) = unary_code(op);
    let (src, sv, dst) = (s.ptr(), Strided::new(l)?, out.ptr());
    let name = format!("unary_{}", dtype.as_str());
    let cfg = cfg_1d(n32, dev.max_blocks());
    if dtype.is_float() {
        launch!(dev, MODULE, &name, cfg, n32, code, p0, p1, src, sv, dst)?;
    } else {
        // Integral affine coefficients: exact integer arithmetic that wraps (as the CPU).
        let (mut im, mut ia) = (0i64, 0i64);
        if let UnaryOp::Affine { mul, add } = op {
            if mul.fract() == 0.0 && add.fract() == 0.0 && mul.abs() < 9e15 && add.abs() < 9e15 {
                code = U_AFFINE_INT;
                (im, ia) = (mul as i64, add as i64);
            }
        }
        launch!(dev, MODULE, &name, cfg, n32, code, im, ia, p0, p1, src, sv, dst)?;
    }
    Ok(out)
}

/// `grad · f'(x)` for gelu, gelu_tanh and silu in one kernel; other cases (another op,
/// mismatched shapes or dtypes, integers) take core's composite.
pub(crate) fn unary_backward(
    dev: &CudaDevice,
    op: UnaryOp,
    x: &Tensor,
    grad: &Tensor,
) -> Result<Tensor> {
    let code = match op {
        UnaryOp::Gelu | UnaryOp::GeluTanh | UnaryOp::Silu => unary_code(op).0,
        _ => return tensor_core::composite::unary_backward(op, x, grad),
    };
    let dtype = x.dtype();
    if !dtype.is_float() || grad.dtype() != dtype || grad.shape() != x.shape() {
        return tensor_core::composite::unary_backward(op, x, grad);
    }
    let n = x.elem_count();
    let out = dev.alloc(n, dtype)?;
    if n > 0 {
        let n32 = check_u32(n)?;
        with_storage(x, |xs, xl| {
            with_storage(grad, |gs, gl| {
                let (xp, sx) = (xs.ptr(), Strided::new(xl)?);
                let (gp, sg) = (gs.ptr(), Strided::new(gl)?);
                let dst = out.ptr();
                let name = format!("unary_bwd_{}", dtype.as_str());
                let cfg = cfg_1d(n32, dev.max_blocks());
                launch!(dev, MODULE, &name, cfg, n32, code, xp, sx, gp, sg, dst)
            })
        })?;
    }
    dev.tensor(out, x.shape().clone(), x)
}

/// The checks the CPU runs on the operands of a binary-shaped op.
fn operands(
    op: &'static str,
    lhs: &CudaStorage,
    lhs_l: &Layout,
    rhs: &CudaStorage,
    rhs_l: &Layout,
) -> Result<()> {
    check_same_shape(lhs_l, rhs_l, op)?;
    check_layout(lhs, lhs_l, op)?;
    check_layout(rhs, rhs_l, op)?;
    if lhs.dtype != rhs.dtype {
        return Err(Error::DTypeMismatch {
            op,
            lhs: lhs.dtype,
            rhs: rhs.dtype,
        });
    }
    Ok(())
}

pub(crate) fn binary(
    dev: &CudaDevice,
    op: BinaryOp,
    lhs: &CudaStorage,
    lhs_l: &Layout,
    rhs: &CudaStorage,
    rhs_l: &Layout,
) -> Result<CudaStorage> {
    operands(op.name(), lhs, lhs_l, rhs, rhs_l)?;
    let dtype = lhs.dtype;
    let n = lhs_l.elem_count();
    let out = dev.alloc(n, dtype)?;
    if n == 0 {
        return Ok(out);
    }
    let n32 = check_u32(n)?;
    let code = binary_code(op);
    let (a, sa, b, sb, dst, err) = (
        lhs.ptr(),
        Strided::new(lhs_l)?,
        rhs.ptr(),
        Strided::new(rhs_l)?,
        out.ptr(),
        dev.err_ptr()?,
    );
    launch!(
        dev,
        MODULE,
        &format!("binary_{}", dtype.as_str()),
        cfg_1d(n32, dev.max_blocks()),
        n32,
        code,
        a,
        sa,
        b,
        sb,
        dst,
        err
    )?;
    if dtype.is_int() && op == BinaryOp::Div {
        dev.check_err("div")?;
    }
    Ok(out)
}

pub(crate) fn cmp(
    dev: &CudaDevice,
    op: CmpOp,
    lhs: &CudaStorage,
    lhs_l: &Layout,
    rhs: &CudaStorage,
    rhs_l: &Layout,
) -> Result<CudaStorage> {
    operands(op.name(), lhs, lhs_l, rhs, rhs_l)?;
    let n = lhs_l.elem_count();
    let out = dev.alloc(n, DType::U8)?;
    if n == 0 {
        return Ok(out);
    }
    let n32 = check_u32(n)?;
    let code = cmp_code(op);
    let (a, sa, b, sb, dst) = (
        lhs.ptr(),
        Strided::new(lhs_l)?,
        rhs.ptr(),
        Strided::new(rhs_l)?,
        out.ptr(),
    );
    launch!(
        dev,
        MODULE,
        &format!("cmp_{}", lhs.dtype.as_str()),
        cfg_1d(n32, dev.max_blocks()),
        n32,
        code,
        a,
        sa,
        b,
        sb,
        dst
    )?;
    Ok(out)
}

/// `cond` is u8 (non-zero picks `on_true`); any other dtype is read as "non-zero" as the CPU
/// does (NaN counts, −0 does not), through a `cond != 0` mask. The values are copied as raw
/// bits of their width.
pub(crate) fn where_cond(
    dev: &CudaDevice,
    cond: &CudaStorage,
    cond_l: &Layout,
    t: &CudaStorage,
    t_l: &Layout,
    f: &CudaStorage,
    f_l: &Layout,
) -> Result<CudaStorage> {
    const OP: &str = "where";
    check_same_shape(cond_l, t_l, OP)?;
    check_layout(cond, cond_l, OP)?;
    operands(OP, t, t_l, f, f_l)?;
    let n = t_l.elem_count();
    let out = dev.alloc(n, t.dtype)?;
    if n == 0 {
        return Ok(out);
    }
    let n32 = check_u32(n)?;
    let mask;
    let (c, sc) = if cond.dtype == DType::U8 {
        (cond.ptr(), Strided::new(cond_l)?)
    } else {
        let zero = crate::copy::full(dev, 1, 0.0, cond.dtype)?;
        let zl = Layout::new(cond_l.shape().clone(), vec![0; cond_l.rank()], 0);
        mask = cmp(dev, CmpOp::Ne, cond, cond_l, &zero, &zl)?;
        (mask.ptr(), Strided::contiguous(0))
    };
    let (tp, st, fp, sf, dst) = (
        t.ptr(),
        Strided::new(t_l)?,
        f.ptr(),
        Strided::new(f_l)?,
        out.ptr(),
    );
    launch!(
        dev,
        MODULE,
        &format!("where_b{}", t.dtype.size_in_bytes()),
        cfg_1d(n32, dev.max_blocks()),
        n32,
        c,
        sc,
        tp,
        st,
        fp,
        sf,
        dst
    )?;
    Ok(out)
}
