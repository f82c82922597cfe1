//! The CPU device: the `BackendDevice` implementation, which downcasts storages and hands each
//! primitive to its kernel file, and the process-wide shared [`device()`].

use std::sync::{Arc, OnceLock};

use tensor_core::{
    BackendDevice, BackendStorage, BinaryOp, CmpOp, DType, Device, HostData, Layout, ReduceOp,
    Result, Storage, UnaryOp, UnfoldParams,
};

use crate::storage::cpu;
use crate::{cast, conv, copy, elementwise, index, random, reduce, CpuStorage};

/// The host CPU. Stateless: rayon's global pool does the threading.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuDevice;

impl CpuDevice {
    /// The shared process-wide CPU [`Device`] (same as [`device()`]).
    pub fn device() -> Device {
        device()
    }
}

/// The shared process-wide CPU [`Device`].
pub fn device() -> Device {
    static DEVICE: OnceLock<Arc<CpuDevice>> = OnceLock::new();
    let d = DEVICE.get_or_init(|| {
        keep_freed_memory();
        Arc::new(CpuDevice)
    });
    Device::new(d.clone())
}

/// Ask glibc's allocator to keep freed blocks for reuse instead of returning them to the
/// kernel. Tensor buffers are large (above glibc's 128 KiB mmap threshold) and short-lived:
/// by default each one is a fresh `mmap` whose pages fault in one by one and a `munmap` on
/// drop, which cost about 15% of a small transformer's training step (page faults, zeroing,
/// TLB shootdowns). With these settings a training loop reaches a steady state where buffers
/// are recycled, at the price of the process holding on to its peak heap (like a caching
/// allocator). Set `TENSOR_ENGINE_RETURN_MEMORY=1` to keep glibc's defaults.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("TENSOR_ENGINE_RETURN_MEMORY").is_some_and(|v| v == "1") {
            return;
        }
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator tuning parameters; it is thread-safe and
        // valid at any time. The values are within glibc's documented ranges.
        unsafe {
            // 32 MiB is the largest threshold glibc accepts on 64-bit targets (a larger value
            // is rejected and leaves the default, dynamic threshold in place).
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

fn boxed(data: HostData) -> Storage {
    Box::new(CpuStorage::new(data))
}

impl BackendDevice for CpuDevice {
    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn from_host(&self, data: HostData) -> Result<Storage> {
        Ok(boxed(data))
    }

    fn to_host(&self, s: &dyn BackendStorage, layout: &Layout) -> Result<HostData> {
        copy::copy_strided(s, layout)
    }

    fn full(&self, n: usize, value: f64, dtype: DType) -> Result<Storage> {
        Ok(boxed(copy::full(n, value, dtype)))
    }

    fn rand_uniform(&self, n: usize, lo: f64, hi: f64, dtype: DType, seed: u64) -> Result<Storage> {
        random::rand_uniform(n, lo, hi, dtype, seed).map(boxed)
    }

    fn rand_normal(
        &self,
        n: usize,
        mean: f64,
        std: f64,
        dtype: DType,
        seed: u64,
    ) -> Result<Storage> {
        random::rand_normal(n, mean, std, dtype, seed).map(boxed)
    }

    fn copy_strided(&self, s: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        copy::copy_strided(s, layout).map(boxed)
    }

    fn copy_into(
        &self,
        dst: &mut dyn BackendStorage,
        dst_l: &Layout,
        src: &dyn BackendStorage,
        src_l: &Layout,
    ) -> Result<()> {
        copy::copy_into(dst, dst_l, src, src_l)
    }

    fn cast(&self, s: &dyn BackendStorage, layout: &Layout, dtype: DType) -> Result<Storage> {
        cast::cast(s, layout, dtype).map(boxed)
    }

    fn unary(&self, op: UnaryOp, s: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        elementwise::unary(op, s, layout).map(boxed)
    }

    fn binary(
        &self,
        op: BinaryOp,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage> {
        elementwise::binary(op, lhs, lhs_l, rhs, rhs_l).map(boxed)
    }

    fn cmp(
        &self,
        op: CmpOp,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage> {
        elementwise::cmp(op, lhs, lhs_l, rhs, rhs_l).map(boxed)
    }

    fn where_cond(
        &self,
        cond: &dyn BackendStorage,
        cond_l: &Layout,
        on_true: &dyn BackendStorage,
        t_l: &Layout,
        on_false: &dyn BackendStorage,
        f_l: &Layout,
    ) -> Result<Storage> {
        elementwise::where_cond(cond, cond_l, on_true, t_l, on_false, f_l).map(boxed)
    }

    fn reduce(
        &self,
        op: ReduceOp,
        s: &dyn BackendStorage,
        layout: &Layout,
        dims: &[usize],
    ) -> Result<Storage> {
        reduce::reduce(op, s, layout, dims).map(boxed)
    }

    fn cumsum(&self, s: &dyn BackendStorage, layout: &Layout, dim: usize) -> Result<Storage> {
        reduce::cumsum(s, layout, dim).map(boxed)
    }

    fn matmul(
        &self,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage> {
        let out = crate::matmul::matmul(cpu(lhs)?, lhs_l, cpu(rhs)?, rhs_l)?;
        Ok(Box::new(out))
    }

    fn index_select(
        &self,
        src: &dyn BackendStorage,
        src_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        index::index_select(src, src_l, ids, ids_l, dim).map(boxed)
    }

    fn gather(
        &self,
        src: &dyn BackendStorage,
        src_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        index::gather(src, src_l, ids, ids_l, dim).map(boxed)
    }

    fn scatter_add(
        &self,
        dst: &dyn BackendStorage,
        dst_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        src: &dyn BackendStorage,
        src_l: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        index::scatter_add(dst, dst_l, ids, ids_l, src, src_l, dim).map(boxed)
    }

    fn index_add(
        &self,
        dst: &dyn BackendStorage,
        dst_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        src: &dyn BackendStorage,
        src_l: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        index::index_add(dst, dst_l, ids, ids_l, src, src_l, dim).map(boxed)
    }

    fn unfold(&self, s: &dyn BackendStorage, layout: &Layout, p: &UnfoldParams) -> Result<Storage> {
        conv::unfold(s, layout, p).map(boxed)
    }

    fn fold(
        &self,
        s: &dyn BackendStorage,
        layout: &Layout,
        p: &UnfoldParams,
        out_spatial: &[usize],
    ) -> Result<Storage> {
        conv::fold(s, layout, p, out_spatial).map(boxed)
    }

    // ---- fused ops: the kernels of `fused.rs` instead of the composed defaults ----------------
    fn softmax_last_dim(&self, x: &tensor_core::Tensor) -> Result<tensor_core::Tensor> {
        crate::fused::softmax_last_dim(x)
    }
    fn log_softmax_last_dim(&self, x: &tensor_core::Tensor) -> Result<tensor_core::Tensor> {
        crate::fused::log_softmax_last_dim(x)
    }
    fn layer_norm(
        &self,
        x: &tensor_core::Tensor,
        weight: Option<&tensor_core::Tensor>,
        bias: Option<&tensor_core::Tensor>,
        eps: f64,
    ) -> Result<tensor_core::Tensor> {
        crate::fused::layer_norm(x, weight, bias, eps)
    }
    fn rms_norm(
        &self,
        x: &tensor_core::Tensor,
        weight: Option<&tensor_core::Tensor>,
        eps: f64,
    ) -> Result<tensor_core::Tensor> {
        crate::fused::rms_norm(x, weight, eps)
    }
    fn rms_norm_backward(
        &self,
        x: &tensor_core::Tensor,
        weight: Option<&tensor_core::Tensor>,
        grad: &tensor_core::Tensor,
        eps: f64,
    ) -> Result<(tensor_core::Tensor, Option<tensor_core::Tensor>)> {
        crate::fused::rms_norm_backward(x, weight, grad, eps)
    }
    fn silu_mul(
        &self,
        gate: &tensor_core::Tensor,
        up: &tensor_core::Tensor,
    ) -> Result<tensor_core::Tensor> {
        crate::fused::silu_mul(gate, up)
    }
    fn silu_mul_backward(
        &self,
        gate: &tensor_core::Tensor,
        up: &tensor_core::Tensor,
        grad: &tensor_core::Tensor,
    ) -> Result<(tensor_core::Tensor, tensor_core::Tensor)> {
        crate::fused::silu_mul_backward(gate, up, grad)
    }
    fn cross_entropy(
        &self,
        logits: &tensor_core::Tensor,
        targets: &tensor_core::Tensor,
        p: &tensor_core::CrossEntropyParams,
    ) -> Result<tensor_core::Tensor> {
        crate::fused::cross_entropy(logits, targets, p)
    }
    fn cross_entropy_backward(
        &self,
        logits: &tensor_core::Tensor,
        targets: &tensor_core::Tensor,
        grad: &tensor_core::Tensor,
        p: &tensor_core::CrossEntropyParams,
    ) -> Result<tensor_core::Tensor> {
        crate::fused::cross_entropy_backward(logits, targets, grad, p)
    }
    fn rope(
        &self,
        x: &tensor_core::Tensor,
        cos: &tensor_core::Tensor,
        sin: &tensor_core::Tensor,
        interleaved: bool,
    ) -> Result<tensor_core::Tensor> {
        crate::fused::rope(x, cos, sin, interleaved)
    }
    fn attention(
        &self,
        q: &tensor_core::Tensor,
        k: &tensor_core::Tensor,
        v: &tensor_core::Tensor,
        p: &tensor_core::AttentionParams,
    ) -> Result<(tensor_core::Tensor, tensor_core::Tensor)> {
        crate::fused::attention(q, k, v, p)
    }
    fn attention_backward(
        &self,
        q: &tensor_core::Tensor,
        k: &tensor_core::Tensor,
        v: &tensor_core::Tensor,
        out: &tensor_core::Tensor,
        lse: &tensor_core::Tensor,
        grad_out: &tensor_core::Tensor,
        p: &tensor_core::AttentionParams,
    ) -> Result<(
        tensor_core::Tensor,
        tensor_core::Tensor,
        tensor_core::Tensor,
    )> {
        crate::fused::attention_backward(q, k, v, out, lse, grad_out, p)
    }
    fn qmatmul(
        &self,
        x: &tensor_core::Tensor,
        w: &tensor_core::quant::QTensor,
    ) -> Result<tensor_core::Tensor> {
        crate::quant::qmatmul(x, w)
    }

    fn fused_decoder(
        &self,
        spec: &tensor_core::decoder::DecoderSpec,
    ) -> Result<Option<Box<dyn tensor_core::decoder::FusedDecoder>>> {
        let dec = crate::decoder::CpuDecoder::new(spec, rayon::current_num_threads())?;
        Ok(Some(Box::new(dec)))
    }

    fn optim_update(
        &self,
        rule: &tensor_core::OptimRule,
        step: u64,
        grad_scale: f64,
        param: &tensor_core::Tensor,
        grad: &tensor_core::Tensor,
        state: &[tensor_core::Tensor],
    ) -> Result<()> {
        crate::optim::optim_update(rule, step, grad_scale, param, grad, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_device() {
        let a = device();
        let b = CpuDevice::device();
        assert_eq!(a.name(), "cpu");
        assert!(a.same_device(&b));
        let s = a.backend().full(3, 1.5, DType::F32).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(
            a.backend()
                .to_host(s.as_ref(), &Layout::contiguous([3]))
                .unwrap(),
            HostData::F32(vec![1.5; 3])
        );
    }
}
