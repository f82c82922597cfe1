//! Uniform and normal sampling. The output is cut into fixed chunks of 64k elements, each drawn
//! from its own `StdRng` seeded from (seed, chunk index), so a seed gives the same tensor
//! whatever the thread count, and chunks can be filled in parallel.

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;
use tensor_core::checks;
use tensor_core::{DType, HostData, Result, WithDType};

const RNG_CHUNK: usize = 1 << 16;

/// SplitMix64's finaliser: decorrelates neighbouring (seed, chunk) pairs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn chunk_rng(seed: u64, chunk: usize) -> StdRng {
    StdRng::seed_from_u64(mix(seed ^ mix(chunk as u64)))
}

fn fill<T: Copy + Send + Default>(
    n: usize,
    seed: u64,
    draw: impl Fn(&mut StdRng) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); n];
    out.par_chunks_mut(RNG_CHUNK)
        .enumerate()
        .for_each(|(c, o)| {
            let mut rng = chunk_rng(seed, c);
            for v in o {
                *v = draw(&mut rng);
            }
        });
    out
}

fn uniform<T: WithDType>(n: usize, lo: f64, hi: f64, seed: u64) -> Vec<T> {
    fill(n, seed, |rng| {
        // Rounding into a narrow dtype can land exactly on `hi`; redraw (almost never twice).
        for _ in 0..16 {
            let v = T::from_f64(lo + (hi - lo) * rng.random::<f64>());
            if v.to_f64() < hi {
                return v;
            }
        }
        T::from_f64(lo)
    })
}

fn normal<T: WithDType>(n: usize, mean: f64, std: f64, seed: u64) -> Vec<T> {
    fill(n, seed, |rng| {
        let z: f64 = rng.sample(StandardNormal);
        T::from_f64(mean + std * z)
    })
}

pub(crate) fn rand_uniform(
    n: usize,
    lo: f64,
    hi: f64,
    dtype: DType,
    seed: u64,
) -> Result<HostData> {
    const OP: &str = "rand_uniform";
    checks::float_dtype(OP, dtype)?;
    checks::uniform_bounds(lo, hi)?;
    if lo == hi {
        return Ok(crate::copy::full(n, lo, dtype));
    }
    Ok(match dtype {
        DType::F16 => HostData::F16(uniform::<f16>(n, lo, hi, seed)),
        DType::BF16 => HostData::BF16(uniform::<bf16>(n, lo, hi, seed)),
        DType::F32 => HostData::F32(uniform::<f32>(n, lo, hi, seed)),
        _ => HostData::F64(uniform::<f64>(n, lo, hi, seed)),
    })
}

pub(crate) fn rand_normal(
    n: usize,
    mean: f64,
    std: f64,
    dtype: DType,
    seed: u64,
) -> Result<HostData> {
    const OP: &str = "rand_normal";
    checks::float_dtype(OP, dtype)?;
    checks::normal_params(mean, std)?;
    Ok(match dtype {
        DType::F16 => HostData::F16(normal::<f16>(n, mean, std, seed)),
        DType::BF16 => HostData::BF16(normal::<bf16>(n, mean, std, seed)),
        DType::F32 => HostData::F32(normal::<f32>(n, mean, std, seed)),
        _ => HostData::F64(normal::<f64>(n, mean, std, seed)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use tensor_core::BackendDevice;

    #[test]
    fn deterministic_and_independent_of_threads() {
        let n = 3 * RNG_CHUNK + 17;
        let a = dev().rand_normal(n, 0.0, 1.0, DType::F32, 42).unwrap();
        let b = dev().rand_normal(n, 0.0, 1.0, DType::F32, 42).unwrap();
        assert_eq!(read(a.as_ref()), read(b.as_ref()));
        // The same draw on a single-threaded pool.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let c = pool.install(|| dev().rand_normal(n, 0.0, 1.0, DType::F32, 42).unwrap());
        assert_eq!(read(a.as_ref()), read(c.as_ref()));
        let d = dev().rand_normal(n, 0.0, 1.0, DType::F32, 43).unwrap();
        assert_ne!(read(a.as_ref()), read(d.as_ref()));
        // A shorter draw is a prefix of a longer one.
        let e = dev().rand_uniform(100, 0.0, 1.0, DType::F64, 7).unwrap();
        let f = dev().rand_uniform(n, 0.0, 1.0, DType::F64, 7).unwrap();
        assert_eq!(read(e.as_ref())[..], read(f.as_ref())[..100]);
    }

    #[test]
    fn moments_and_bounds() {
        let n = 200_000;
        for dt in [DType::F16, DType::BF16, DType::F32, DType::F64] {
            let u = read(dev().rand_uniform(n, -2.0, 3.0, dt, 1).unwrap().as_ref());
            assert!(u.iter().all(|&x| (-2.0..3.0).contains(&x)), "{dt}");
            let mean = u.iter().sum::<f64>() / n as f64;
            assert!((mean - 0.5).abs() < 0.03, "{dt} uniform mean {mean}");
            let g = read(dev().rand_normal(n, 1.0, 2.0, dt, 2).unwrap().as_ref());
            let m = g.iter().sum::<f64>() / n as f64;
            let v = g.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
            assert!((m - 1.0).abs() < 0.03, "{dt} normal mean {m}");
            assert!(
                (v.sqrt() - 2.0).abs() < 0.03,
                "{dt} normal std {}",
                v.sqrt()
            );
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        for dt in [DType::U8, DType::U32, DType::I64] {
            assert!(matches!(
                dev().rand_uniform(4, 0.0, 1.0, dt, 0),
                Err(tensor_core::Error::UnsupportedDType { .. })
            ));
            assert!(dev().rand_normal(4, 0.0, 1.0, dt, 0).is_err());
        }
        assert!(dev().rand_uniform(4, 1.0, 0.0, DType::F32, 0).is_err());
        assert!(dev().rand_normal(4, 0.0, -1.0, DType::F32, 0).is_err());
        assert!(dev().rand_normal(4, f64::NAN, 1.0, DType::F32, 0).is_err());
        let same = read(
            dev()
                .rand_uniform(3, 2.0, 2.0, DType::F32, 0)
                .unwrap()
                .as_ref(),
        );
        assert_eq!(same, [2.0; 3]);
    }
}
