//! Host-side checks that need no GPU: asking for a device without a driver is an `Err`, and
//! every kernel module compiles with NVRTC (when libnvrtc is present; it needs no GPU).

#[test]
fn asking_for_a_missing_device_is_an_error() {
    if tensor_cuda::is_available() {
        let e = tensor_cuda::device(999).expect_err("device 999 should not exist");
        assert!(e.to_string().contains("no CUDA device 999"), "{e}");
    } else {
        let e = tensor_cuda::device(0).expect_err("no GPU here");
        let m = e.to_string();
        assert!(m.contains("CUDA"), "unclear error: {m}");
        eprintln!("no CUDA here, as expected: {m}");
    }
}

#[test]
fn every_kernel_module_compiles() {
    if !tensor_cuda::kernels::nvrtc_present() {
        eprintln!("skipped: libnvrtc not found");
        return;
    }
    let mut failures = vec![];
    for m in tensor_cuda::kernels::all_modules() {
        if let Err(e) = tensor_cuda::kernels::compile_cubin(m, "sm_90") {
            failures.push(format!("{}: {e}", m.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Transfers, fills, strided copies and casts on the GPU (skipped without one).
#[test]
fn transfers_fills_copies_and_casts_on_the_gpu() {
    use tensor_core::{DType, HostData, Tensor};
    let Ok(dev) = tensor_cuda::device(0) else {
        eprintln!("skipped: no CUDA device");
        return;
    };
    let v: Vec<f64> = (0..24).map(|i| i as f64 * 0.37 - 3.0).collect();
    let t = Tensor::from_f64s(&v, (2, 3, 4), DType::F64, &dev).unwrap();
    assert_eq!(t.to_f64_vec().unwrap(), v);
    // [2, 3, 4] -> [2, 4, 3]
    let tt = t.transpose(1, 2).unwrap().contiguous().unwrap();
    let mut want = vec![];
    for a in 0..2 {
        for c in 0..4 {
            for b in 0..3 {
                want.push(v[a * 12 + b * 4 + c]);
            }
        }
    }
    assert_eq!(tt.to_f64_vec().unwrap(), want);
    assert_eq!(t.transpose(1, 2).unwrap().to_f64_vec().unwrap(), want);
    for dt in DType::ALL {
        let c = t.to_dtype(dt).unwrap();
        let want = HostData::from_f64_slice(&v, dt).to_f64_vec();
        assert_eq!(c.to_f64_vec().unwrap(), want, "cast f64 -> {dt}");
        let back = c.to_dtype(DType::F32).unwrap();
        let want32: Vec<f64> = want.iter().map(|&x| x as f32 as f64).collect();
        assert_eq!(back.to_f64_vec().unwrap(), want32, "cast {dt} -> f32");
    }
    for dt in DType::ALL {
        let f = Tensor::full(2.5, (3, 5), dt, &dev).unwrap();
        let want = HostData::from_f64_slice(&[2.5], dt).to_f64_vec()[0];
        assert_eq!(f.to_f64_vec().unwrap(), vec![want; 15], "full {dt}");
    }
}
