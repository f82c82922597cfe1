//! The CUDA device: context, the one stream all work goes to, cuBLAS, the kernel cache, the
//! caching allocator and the device-side error flag; and the `BackendDevice` implementation,
//! which hands each primitive to its kernel file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{result, CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;
use tensor_core::{
    BackendDevice, BackendStorage, BinaryOp, CmpOp, DType, Device, HostData, Layout, ReduceOp,
    Result, Storage, Tensor, UnaryOp, UnfoldParams,
};

use crate::error::{backend, drv};
use crate::kernels::{compile_cubin, ModuleSrc};
use crate::storage::{cuda, DevBuf, Pool, PoolStats};
use crate::{
    attention, copy, elementwise, fused, index, matmul, quant, random, reduce, CudaStorage,
};

#[derive(Default)]
struct KernelCache {
    modules: HashMap<&'static str, Arc<CudaModule>>,
    funcs: HashMap<String, CudaFunction>,
}

/// One CUDA GPU. Every op is queued on one stream (`stream()`), in call order.
pub struct CudaDevice {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: Mutex<CudaBlas>,
    kernels: Mutex<KernelCache>,
    pool: Arc<Pool>,
    /// One u32 per host thread that kernels set on a bad index or an integer division by
    /// zero (per thread, so that concurrent ops never see each other's errors).
    err_flags: Mutex<HashMap<std::thread::ThreadId, DevBuf>>,
    arch: String,
    sm_count: u32,
    gpu_name: String,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaDevice(cuda:{}, {}, {})",
            self.ordinal, self.gpu_name, self.arch
        )
    }
}

/// Whether a CUDA driver and at least one GPU are present (never panics).
pub fn is_available() -> bool {
    device(0).is_ok()
}

fn registry() -> &'static Mutex<HashMap<usize, Arc<CudaDevice>>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
    DEVICES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The shared CUDA device `ordinal`, created on first use. Without a driver, the NVRTC or
/// cuBLAS libraries, or a GPU with that ordinal, this is an `Err` that says which.
pub fn device(ordinal: usize) -> Result<Device> {
    let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = map.get(&ordinal) {
        return Ok(Device::new(d.clone()));
    }
    let d = Arc::new(CudaDevice::new(ordinal)?);
    map.insert(ordinal, d.clone());
    Ok(Device::new(d))
}

/// The CUDA device behind a [`Device`], if it is one of this crate's.
pub fn as_cuda(d: &Device) -> Option<Arc<CudaDevice>> {
    let addr = d.backend() as *const dyn BackendDevice as *const u8;
    let map = registry().lock().unwrap_or_else(|e| e.into_inner());
    map.values()
        .find(|c| std::ptr::eq(Arc::as_ptr(c) as *const u8, addr))
        .cloned()
}

impl CudaDevice {
    fn new(ordinal: usize) -> Result<CudaDevice> {
        // A missing library makes cudarc panic on first use: check each one first.
        // SAFETY: these only try to dlopen the libraries.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(backend(
                "no CUDA driver found (libcuda.so could not be loaded): this machine has no NVIDIA GPU driver",
            ));
        }
        if !crate::kernels::nvrtc_present() {
            return Err(backend(
                "CUDA driver found but not NVRTC (libnvrtc.so.13): install the CUDA 13 runtime libraries",
            ));
        }
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(backend(
                "CUDA driver found but not cuBLAS (libcublas.so.13): install the CUDA 13 runtime libraries",
            ));
        }
        let count = CudaContext::device_count().map_err(drv("cuDeviceGetCount"))?;
        if ordinal >= count.max(0) as usize {
            return Err(backend(format!(
                "no CUDA device {ordinal}: the driver sees {count} device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("creating the CUDA context"))?;
        // We order all work on one stream ourselves: no per-buffer events.
        // SAFETY: called before any buffer or second stream exists.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(drv("compute capability"))?;
        let arch = format!("sm_{major}{minor}");
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(drv("multiprocessor count"))? as u32;
        let gpu_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        // A stream of our own (not the legacy NULL stream) so that CUDA graphs can capture it.
        let stream = ctx.new_stream().map_err(drv("creating a stream"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(drv("creating the cuBLAS handle"))?;
        let pool = Pool::new(ctx.clone());
        Ok(CudaDevice {
            ordinal,
            ctx,
            stream,
            blas: Mutex::new(blas),
            kernels: Mutex::new(KernelCache::default()),
            pool,
            err_flags: Mutex::new(HashMap::new()),
            arch,
            sm_count,
            gpu_name,
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream every op of this device is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The cuBLAS handle (bound to [`CudaDevice::stream`]).
    pub fn blas(&self) -> MutexGuard<'_, CudaBlas> {
        self.blas.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// `sm_XY` of this GPU.
    pub fn arch(&self) -> &str {
        &self.arch
    }
    pub fn gpu_name(&self) -> &str {
        &self.gpu_name
    }
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }
    /// Grid size cap for grid-stride loops: enough blocks to fill every SM several times.
    pub fn max_blocks(&self) -> u32 {
        self.sm_count * 16
    }
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }
    /// Give cached (freed) device memory back to the driver.
    pub fn empty_cache(&self) -> Result<()> {
        self.pool.empty_cache()
    }

    /// Kernel `name` of module `m`, compiling and loading the module on first use.
    pub fn func(&self, m: &'static ModuleSrc, name: &str) -> Result<CudaFunction> {
        let mut k = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = k.funcs.get(name) {
            return Ok(f.clone());
        }
        let module = match k.modules.get(m.name) {
            Some(md) => md.clone(),
            None => {
                let cubin = compile_cubin(m, &self.arch)?;
                let md = self
                    .ctx
                    .load_module(Ptx::from_binary(cubin))
                    .map_err(drv("loading a kernel module"))?;
                k.modules.insert(m.name, md.clone());
                md
            }
        };
        let f = module
            .load_function(name)
            .map_err(|e| backend(format!("kernel {name} not found in module {}: {e}", m.name)))?;
        k.funcs.insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// A new uninitialised buffer of `n` elements of `dtype`.
    pub fn alloc(&self, n: usize, dtype: DType) -> Result<CudaStorage> {
        let bytes = n.checked_mul(dtype.size_in_bytes()).ok_or_else(|| {
            backend(format!(
                "{n} elements of {dtype} overflow the address space"
            ))
        })?;
        Ok(CudaStorage {
            buf: self.pool.alloc(bytes)?,
            dtype,
            len: n,
        })
    }

    /// A zero-filled buffer.
    pub fn zeros(&self, n: usize, dtype: DType) -> Result<CudaStorage> {
        let s = self.alloc(n, dtype)?;
        if n > 0 {
            // SAFETY: writes the buffer's own bytes, on our stream.
            unsafe {
                result::memset_d8_async(
                    s.ptr(),
                    0,
                    n * dtype.size_in_bytes(),
                    self.stream.cu_stream(),
                )
            }
            .map_err(drv("memset"))?;
        }
        Ok(s)
    }

    /// The device address of the calling thread's error flag, for kernels that validate
    /// indices or integer divisors.
    pub fn err_ptr(&self) -> Result<u64> {
        self.thread_flag()
    }

    fn thread_flag(&self) -> Result<u64> {
        let mut flags = self.err_flags.lock().unwrap_or_else(|e| e.into_inner());
        let id = std::thread::current().id();
        if let Some(b) = flags.get(&id) {
            return Ok(b.ptr());
        }
        let b = self.zeros(1, DType::U32)?.buf;
        let p = b.ptr();
        flags.insert(id, b);
        Ok(p)
    }

    /// Wait for the queued work and turn a raised error flag of this thread into an `Err`
    /// for `op` (costs a device synchronisation: called only by ops that validate indices or
    /// integer divisors).
    pub fn check_err(&self, op: &'static str) -> Result<()> {
        let ptr = self.thread_flag()?;
        let mut flag = [0u32];
        // SAFETY: reads this thread's own 4-byte flag on our stream, then waits for it.
        unsafe { result::memcpy_dtoh_async(&mut flag, ptr, self.stream.cu_stream()) }
            .map_err(drv("reading the error flag"))?;
        self.stream.synchronize().map_err(drv("synchronize"))?;
        if flag[0] == 0 {
            return Ok(());
        }
        // SAFETY: clears the same flag.
        unsafe { result::memset_d8_async(ptr, 0, 4, self.stream.cu_stream()) }
            .map_err(drv("memset"))?;
        let what = match flag[0] {
            1 => "an index is out of range",
            2 => "integer division by zero",
            _ => "an index is out of range and an integer division by zero occurred",
        };
        Err(tensor_core::Error::InvalidArgument {
            op,
            msg: format!("{what} (found on cuda:{})", self.ordinal),
        })
    }

    /// Wrap a storage of this device as a contiguous tensor.
    pub fn tensor(
        &self,
        s: CudaStorage,
        shape: impl Into<tensor_core::Shape>,
        like: &Tensor,
    ) -> Result<Tensor> {
        Tensor::from_backend_storage(Box::new(s), shape, like.device())
    }
}

fn boxed(s: CudaStorage) -> Storage {
    Box::new(s)
}

impl BackendDevice for CudaDevice {
    fn name(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv("synchronize"))
    }

    fn from_host(&self, data: HostData) -> Result<Storage> {
        copy::from_host(self, data).map(boxed)
    }
    fn to_host(&self, s: &dyn BackendStorage, layout: &Layout) -> Result<HostData> {
        copy::to_host(self, cuda(s)?, layout)
    }
    fn full(&self, n: usize, value: f64, dtype: DType) -> Result<Storage> {
        copy::full(self, n, value, dtype).map(boxed)
    }
    fn rand_uniform(&self, n: usize, lo: f64, hi: f64, dtype: DType, seed: u64) -> Result<Storage> {
        random::rand_uniform(self, n, lo, hi, dtype, seed).map(boxed)
    }
    fn rand_normal(
        &self,
        n: usize,
        mean: f64,
        std: f64,
        dtype: DType,
        seed: u64,
    ) -> Result<Storage> {
        random::rand_normal(self, n, mean, std, dtype, seed).map(boxed)
    }
    fn copy_strided(&self, s: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        copy::copy_strided(self, cuda(s)?, layout).map(boxed)
    }
    fn copy_into(
        &self,
        dst: &mut dyn BackendStorage,
        dst_l: &Layout,
        src: &dyn BackendStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let src = cuda(src)?;
        copy::copy_into(self, crate::storage::cuda_mut(dst)?, dst_l, src, src_l)
    }
    fn cast(&self, s: &dyn BackendStorage, layout: &Layout, dtype: DType) -> Result<Storage> {
        copy::cast(self, cuda(s)?, layout, dtype).map(boxed)
    }

    fn unary(&self, op: UnaryOp, s: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        elementwise::unary(self, op, cuda(s)?, layout).map(boxed)
    }
    fn binary(
        &self,
        op: BinaryOp,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage> {
        elementwise::binary(self, op, cuda(lhs)?, lhs_l, cuda(rhs)?, rhs_l).map(boxed)
    }
    fn cmp(
        &self,
        op: CmpOp,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage> {
        elementwise::cmp(self, op, cuda(lhs)?, lhs_l, cuda(rhs)?, rhs_l).map(boxed)
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
        elementwise::where_cond(
            self,
            cuda(cond)?,
            cond_l,
            cuda(on_true)?,
            t_l,
            cuda(on_false)?,
            f_l,
        )
        .map(boxed)
    }

    fn reduce(
        &self,
        op: ReduceOp,
        s: &dyn BackendStorage,
        layout: &Layout,
        dims: &[usize],
    ) -> Result<Storage> {
        reduce::reduce(self, op, cuda(s)?, layout, dims).map(boxed)
    }
    fn cumsum(&self, s: &dyn BackendStorage, layout: &Layout, dim: usize) -> Result<Storage> {
        reduce::cumsum(self, cuda(s)?, layout, dim).map(boxed)
    }

    fn matmul(
        &self,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage> {
        matmul::matmul(self, cuda(lhs)?, lhs_l, cuda(rhs)?, rhs_l).map(boxed)
    }

    fn index_select(
        &self,
        src: &dyn BackendStorage,
        src_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        index::index_select(self, cuda(src)?, src_l, cuda(ids)?, ids_l, dim).map(boxed)
    }
    fn gather(
        &self,
        src: &dyn BackendStorage,
        src_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        index::gather(self, cuda(src)?, src_l, cuda(ids)?, ids_l, dim).map(boxed)
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
        index::scatter_add(
            self,
            cuda(dst)?,
            dst_l,
            cuda(ids)?,
            ids_l,
            cuda(src)?,
            src_l,
            dim,
        )
        .map(boxed)
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
        index::index_add(
            self,
            cuda(dst)?,
            dst_l,
            cuda(ids)?,
            ids_l,
            cuda(src)?,
            src_l,
            dim,
        )
        .map(boxed)
    }

    fn unfold(&self, s: &dyn BackendStorage, layout: &Layout, p: &UnfoldParams) -> Result<Storage> {
        index::unfold(self, cuda(s)?, layout, p).map(boxed)
    }
    fn fold(
        &self,
        s: &dyn BackendStorage,
        layout: &Layout,
        p: &UnfoldParams,
        out_spatial: &[usize],
    ) -> Result<Storage> {
        index::fold(self, cuda(s)?, layout, p, out_spatial).map(boxed)
    }

    // ---- fused ops ---------------------------------------------------------------------------
    fn softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        fused::softmax_last_dim(self, x)
    }
    fn log_softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        fused::log_softmax_last_dim(self, x)
    }
    fn layer_norm(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        fused::layer_norm(self, x, weight, bias, eps)
    }
    fn rms_norm(&self, x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        fused::rms_norm(self, x, weight, eps)
    }
    fn rms_norm_backward(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        grad: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Option<Tensor>)> {
        fused::rms_norm_backward(self, x, weight, grad, eps)
    }
    fn layer_norm_backward(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        has_bias: bool,
        grad: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        fused::layer_norm_backward(self, x, weight, has_bias, grad, eps)
    }
    fn unary_backward(&self, op: UnaryOp, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        elementwise::unary_backward(self, op, x, grad)
    }
    fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        fused::silu_mul(self, gate, up)
    }
    fn silu_mul_backward(
        &self,
        gate: &Tensor,
        up: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        fused::silu_mul_backward(self, gate, up, grad)
    }
    fn cross_entropy(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        p: &tensor_core::CrossEntropyParams,
    ) -> Result<Tensor> {
        fused::cross_entropy(self, logits, targets, p)
    }
    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        grad: &Tensor,
        p: &tensor_core::CrossEntropyParams,
    ) -> Result<Tensor> {
        fused::cross_entropy_backward(self, logits, targets, grad, p)
    }
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
        fused::rope(self, x, cos, sin, interleaved)
    }
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        p: &tensor_core::AttentionParams,
    ) -> Result<(Tensor, Tensor)> {
        attention::attention(self, q, k, v, p)
    }
    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        grad_out: &Tensor,
        p: &tensor_core::AttentionParams,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        attention::attention_backward(self, q, k, v, out, lse, grad_out, p)
    }
    fn qmatmul(&self, x: &Tensor, w: &tensor_core::quant::QTensor) -> Result<Tensor> {
        quant::qmatmul(self, x, w)
    }
    fn conv(&self, x: &Tensor, w: &Tensor, p: &tensor_core::ConvParams) -> Result<Tensor> {
        fused::conv(self, x, w, p)
    }
    fn optim_update(
        &self,
        rule: &tensor_core::OptimRule,
        step: u64,
        grad_scale: f64,
        param: &Tensor,
        grad: &Tensor,
        state: &[Tensor],
    ) -> Result<()> {
        fused::optim_update(self, rule, step, grad_scale, param, grad, state)
    }
    fn fused_decoder(
        &self,
        spec: &tensor_core::decoder::DecoderSpec,
    ) -> Result<Option<Box<dyn tensor_core::decoder::FusedDecoder>>> {
        crate::decoder::fused_decoder(self, spec)
    }
}
