//! Run-time compiled kernels: CUDA C sources (in `kernels/`, each prefixed with
//! `kernels/prelude.cuh`) compiled by NVRTC straight to CUBIN for the device's architecture
//! (no PTX, so the driver's JIT never runs), loaded once per process and device, and looked
//! up by name. Also the launch-side helpers shared by every kernel file: [`Strided`] views and
//! the 1-D launch configuration.

use std::ffi::{c_char, CString};

use cudarc::driver::{DeviceRepr, LaunchConfig};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use tensor_core::{Layout, Result};

use crate::error::backend;

/// One kernel source file. Each kernel file declares its own `static` and passes it to
/// [`crate::CudaDevice::func`]; kernel names must be unique across modules.
#[derive(Debug)]
pub struct ModuleSrc {
    pub name: &'static str,
    pub src: &'static str,
}

pub(crate) const PRELUDE: &str = include_str!("../kernels/prelude.cuh");

/// Every module, for the compile check.
pub fn all_modules() -> Vec<&'static ModuleSrc> {
    vec![
        &crate::copy::MODULE,
        &crate::elementwise::MODULE,
        &crate::reduce::MODULE,
        &crate::index::MODULE,
        &crate::random::MODULE,
        &crate::fused::MODULE,
        &crate::attention::MODULE,
        &crate::quant::MODULE,
        &crate::decoder::MODULE,
    ]
}

/// Whether NVRTC can be loaded (it is looked for only when asked, so this is safe anywhere).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { nvrtc_sys::is_culib_present() }
}

/// Compile `m` (with the prelude) for `arch` (e.g. `sm_90`) and return the CUBIN image.
pub fn compile_cubin(m: &ModuleSrc, arch: &str) -> Result<Vec<u8>> {
    if !nvrtc_present() {
        return Err(backend(
            "NVRTC (libnvrtc) not found: cannot compile CUDA kernels",
        ));
    }
    let src = format!("{PRELUDE}\n#line 1 \"{}.cu\"\n{}", m.name, m.src);
    let csrc = CString::new(src).map_err(|_| backend("kernel source holds a NUL byte"))?;
    let cname = CString::new(format!("{}.cu", m.name)).expect("module names have no NUL");
    let prog = nvrtc::create_program(&csrc, Some(&cname))
        .map_err(|e| backend(format!("nvrtcCreateProgram({}): {e}", m.name)))?;
    let opts = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--fmad=true".to_string(),
        "-default-device".to_string(),
    ];
    // SAFETY: `prog` is a live program; the options are plain C strings.
    let compiled = unsafe { nvrtc::compile_program(prog, &opts) };
    let out = match compiled {
        Err(e) => {
            // SAFETY: reading the log of a live program.
            let log = unsafe { nvrtc::get_program_log(prog) }
                .map(|v| {
                    let bytes: Vec<u8> = v
                        .iter()
                        .take_while(|&&c| c != 0)
                        .map(|&c| c as u8)
                        .collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
                .unwrap_or_default();
            Err(backend(format!(
                "NVRTC failed to compile kernel module {} for {arch}: {e}\n{log}",
                m.name
            )))
        }
        Ok(()) => {
            let mut size = 0usize;
            // SAFETY: size query then copy into a buffer of that size.
            let r = unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) };
            if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
                Err(backend(format!("nvrtcGetCUBINSize({}): {r:?}", m.name)))
            } else {
                let mut image = vec![0u8; size];
                let r =
                    unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, image.as_mut_ptr() as *mut c_char) };
                if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
                    Err(backend(format!("nvrtcGetCUBIN({}): {r:?}", m.name)))
                } else {
                    Ok(image)
                }
            }
        }
    };
    // SAFETY: the program is not used after this.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    out
}

/// Most dims a [`Strided`] view keeps after merging (the prelude's `MAXD`).
pub const MAXD: usize = 8;

/// A strided view as kernels take it (the prelude's `struct Strided`): dims and strides in
/// elements, innermost last; `rank == 0` means contiguous from `offset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Strided {
    pub dims: [u32; MAXD],
    pub strides: [u64; MAXD],
    pub offset: u64,
    pub rank: u32,
    pub pad: u32,
}

// SAFETY: plain `repr(C)` data with the layout of the prelude's struct.
unsafe impl DeviceRepr for Strided {}

impl Strided {
    /// The view of `l`, with size-1 dims dropped and dims that are contiguous with each
    /// other merged. Errors when more than [`MAXD`] dims remain or a dim is ≥ 2^32.
    pub fn new(l: &Layout) -> Result<Strided> {
        let mut dims: Vec<(usize, usize)> = Vec::with_capacity(l.rank());
        for (&d, &s) in l.dims().iter().zip(l.strides()) {
            if d == 1 {
                continue;
            }
            if let Some(last) = dims.last_mut() {
                if last.1 == s * d {
                    last.0 *= d;
                    last.1 = s;
                    continue;
                }
            }
            dims.push((d, s));
        }
        check_u32(l.elem_count())?;
        let mut out = Strided {
            offset: l.offset() as u64,
            ..Default::default()
        };
        if dims.is_empty() || (dims.len() == 1 && dims[0].1 == 1) {
            return Ok(out);
        }
        if dims.len() > MAXD {
            return Err(backend(format!(
                "a strided view of {} non-mergeable dims (shape {:?}, strides {:?}); CUDA kernels take at most {MAXD}",
                dims.len(),
                l.dims(),
                l.strides()
            )));
        }
        for (i, &(d, s)) in dims.iter().enumerate() {
            out.dims[i] = d as u32;
            out.strides[i] = s as u64;
        }
        out.rank = dims.len() as u32;
        Ok(out)
    }

    /// A contiguous view starting at `offset`.
    pub fn contiguous(offset: usize) -> Strided {
        Strided {
            offset: offset as u64,
            ..Default::default()
        }
    }
}

/// Kernels index elements with 32-bit counters.
pub fn check_u32(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| {
        backend(format!(
            "a tensor of {n} elements: CUDA kernels here take at most {} elements per launch",
            u32::MAX
        ))
    })
}

/// Threads per block of the 1-D elementwise launches.
pub const BLOCK: u32 = 256;

/// A grid-stride 1-D launch over `n` elements (at most `max_blocks` blocks).
pub fn cfg_1d(n: u32, max_blocks: u32) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK).clamp(1, max_blocks.max(1));
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor_core::Shape;

    #[test]
    fn strided_views_merge_contiguous_dims() {
        let l = Layout::contiguous(Shape::from(vec![2, 3, 4]));
        let s = Strided::new(&l).unwrap();
        assert_eq!(s.rank, 0);
        let t = l.permute(&[0, 2, 1]);
        let s = Strided::new(&t).unwrap();
        assert_eq!(s.rank, 3);
        assert_eq!(&s.dims[..3], &[2, 4, 3]);
        assert_eq!(&s.strides[..3], &[12, 1, 4]);
        let n = l.narrow(2, 1, 2);
        let s = Strided::new(&n).unwrap();
        assert_eq!(s.rank, 2);
        assert_eq!(&s.dims[..2], &[6, 2]);
        assert_eq!(&s.strides[..2], &[4, 1]);
        assert_eq!(s.offset, 1);
        assert_eq!(std::mem::size_of::<Strided>(), 112);
    }
}
