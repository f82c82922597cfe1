//! Optimizer steps allocate no parameter-sized memory once their state exists: a counting
//! global allocator measures the bytes allocated by `step` (its own test binary, one test, so
//! nothing else allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use tensor_core::{DType, GradStore, Result, Tensor, Var};
use tensor_nn::optim::{
    Adagrad, AdagradConfig, Adam, AdamConfig, AdamW, AdamWConfig, Lion, LionConfig, Optimizer,
    RmsProp, RmsPropConfig, Sgd, SgdConfig,
};

struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: usize = 1 << 20;

fn setup() -> Result<(Vec<(String, Var)>, GradStore)> {
    let dev = tensor_cpu::device();
    let mut params = Vec::new();
    let mut grads = GradStore::default();
    // One large parameter (the parallel path) and one small one (the sequential path).
    for (i, n) in [N, 1000].into_iter().enumerate() {
        let w = Var::from_tensor(&Tensor::rand_seeded(
            -1.0,
            1.0,
            n,
            DType::F32,
            &dev,
            i as u64,
        )?)?;
        let g = Tensor::rand_seeded(-1.0, 1.0, n, DType::F32, &dev, 10 + i as u64)?;
        grads.insert(w.as_tensor(), g);
        params.push((format!("p{i}"), w));
    }
    Ok((params, grads))
}

/// Bytes allocated by `steps` steps after the first (which allocates the state).
fn measure(opt: &mut dyn Optimizer, grads: &GradStore, steps: usize) -> Result<usize> {
    opt.step(grads)?;
    let before = BYTES.load(Ordering::Relaxed);
    for _ in 0..steps {
        opt.step_scaled(grads, 0.5)?;
    }
    Ok((BYTES.load(Ordering::Relaxed) - before) / steps)
}

#[test]
fn steps_allocate_far_less_than_a_parameter() -> Result<()> {
    let param_bytes = N * std::mem::size_of::<f32>();
    let (params, grads) = setup()?;
    let mut opts: Vec<(&str, Box<dyn Optimizer>)> = vec![
        (
            "sgd",
            Box::new(Sgd::new(
                params.clone(),
                SgdConfig {
                    lr: 0.01,
                    momentum: 0.9,
                    nesterov: true,
                    weight_decay: 1e-4,
                    ..Default::default()
                },
            )?),
        ),
        (
            "adam",
            Box::new(Adam::new(
                params.clone(),
                AdamConfig {
                    amsgrad: true,
                    weight_decay: 1e-4,
                    ..Default::default()
                },
            )?),
        ),
        (
            "adamw",
            Box::new(AdamW::new(params.clone(), AdamWConfig::default())?),
        ),
        (
            "rmsprop",
            Box::new(RmsProp::new(
                params.clone(),
                RmsPropConfig {
                    centered: true,
                    momentum: 0.9,
                    ..Default::default()
                },
            )?),
        ),
        (
            "adagrad",
            Box::new(Adagrad::new(params.clone(), AdagradConfig::default())?),
        ),
        (
            "lion",
            Box::new(Lion::new(params.clone(), LionConfig::default())?),
        ),
    ];
    // Warm up the thread pool and lazy statics outside the measurement.
    Sgd::new(params.clone(), SgdConfig::default())?.step(&grads)?;
    for (name, opt) in &mut opts {
        let per_step = measure(opt.as_mut(), &grads, 3)?;
        println!("{name}: {per_step} bytes per step (a parameter is {param_bytes} bytes)");
        assert!(
            per_step < param_bytes / 64,
            "{name} allocated {per_step} bytes per step; a parameter is {param_bytes} bytes"
        );
    }
    // Sanity check of the counter: the first step of a fresh Adam allocates its state.
    let mut fresh = Adam::new(params, AdamConfig::default())?;
    let before = BYTES.load(Ordering::Relaxed);
    fresh.step(&grads)?;
    assert!(BYTES.load(Ordering::Relaxed) - before >= 2 * param_bytes);
    Ok(())
}
