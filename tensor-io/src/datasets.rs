//! Small real data sets and batching: scikit-learn's handwritten digits (fetched by
//! `scripts/fetch_digits.sh`), fixed train/test splits, and seeded shuffled mini-batches.

use std::path::Path;

use tensor_core::{DType, Device, Error, Result, Tensor};

/// A classification data set held on the host: `features` row-major `[n, dim]`.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
    pub dim: usize,
    pub classes: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The rows at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let mut features = Vec::with_capacity(idx.len() * self.dim);
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            features.extend_from_slice(&self.features[i * self.dim..(i + 1) * self.dim]);
            labels.push(self.labels[i]);
        }
        Dataset {
            features,
            labels,
            dim: self.dim,
            classes: self.classes,
        }
    }

    /// A fixed split: a seeded permutation, the first `test` rows held out.
    pub fn split(&self, test: usize, seed: u64) -> Result<(Dataset, Dataset)> {
        if test >= self.len() {
            return Err(Error::invalid(
                "Dataset::split",
                format!("test size {test} leaves no training rows of {}", self.len()),
            ));
        }
        let perm = permutation(self.len(), seed);
        Ok((self.subset(&perm[test..]), self.subset(&perm[..test])))
    }

    /// Features `[n, dim]` (f32) and labels `[n]` (i64) of the rows `idx`, on `device`.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let s = self.subset(idx);
        let x = Tensor::from_vec(s.features, (idx.len(), self.dim), device)?;
        let y: Vec<i64> = s.labels.iter().map(|&l| l as i64).collect();
        Ok((x, Tensor::from_vec(y, idx.len(), device)?))
    }

    /// The whole set as tensors.
    pub fn tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let all: Vec<usize> = (0..self.len()).collect();
        self.batch(&all, device)
    }
}

/// A seeded permutation of `0..n` (Fisher–Yates over splitmix64), the same on every machine.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// Mini-batches of indices for one epoch: a permutation seeded by `(seed, epoch)`, cut into
/// `batch`-sized chunks (the last one shorter unless `drop_last`).
pub fn epoch_batches(
    n: usize,
    batch: usize,
    seed: u64,
    epoch: u64,
    drop_last: bool,
) -> Vec<Vec<usize>> {
    let perm = permutation(n, seed.wrapping_mul(1_000_003).wrapping_add(epoch));
    perm.chunks(batch.max(1))
        .filter(|c| !drop_last || c.len() == batch)
        .map(|c| c.to_vec())
        .collect()
}

/// Load the digits CSV (`scripts/fetch_digits.sh` prints its path): 1,797 rows of 64 pixel
/// values in 0..16 and a label. Pixels are scaled to [0, 1].
pub fn load_digits(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    let bad = |line: usize, msg: String| {
        Error::invalid("load_digits", format!("{}:{line}: {msg}", path.display()))
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid(
            "load_digits",
            format!(
                "cannot read '{}': {e} (run scripts/fetch_digits.sh to download it)",
                path.display()
            ),
        )
    })?;
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let vals: Vec<&str> = line.split(',').collect();
        if vals.len() != 65 {
            return Err(bad(
                i + 1,
                format!("expected 65 values, got {}", vals.len()),
            ));
        }
        for v in &vals[..64] {
            let x: f32 = v
                .trim()
                .parse()
                .map_err(|_| bad(i + 1, format!("pixel '{v}' is not a number")))?;
            if !(0.0..=16.0).contains(&x) {
                return Err(bad(i + 1, format!("pixel {x} outside 0..16")));
            }
            features.push(x / 16.0);
        }
        let l: f32 = vals[64]
            .trim()
            .parse()
            .map_err(|_| bad(i + 1, format!("label '{}' is not a number", vals[64])))?;
        if !(0.0..=9.0).contains(&l) || l.fract() != 0.0 {
            return Err(bad(i + 1, format!("label {l} is not a digit")));
        }
        labels.push(l as u32);
    }
    if labels.is_empty() {
        return Err(bad(0, "no rows".into()));
    }
    Ok(Dataset {
        features,
        labels,
        dim: 64,
        classes: 10,
    })
}

/// Accuracy of `logits: [n, classes]` against integer `labels: [n]`.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let pred = logits.argmax(-1)?.to_dtype(DType::I64)?;
    let hits = pred
        .eq(&labels.to_dtype(DType::I64)?)?
        .to_dtype(DType::F64)?;
    hits.mean_all()?.to_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_seeded() {
        let p = permutation(100, 7);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(p, permutation(100, 7));
        assert_ne!(p, permutation(100, 8));
        let b = epoch_batches(10, 4, 1, 0, false);
        assert_eq!(b.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(epoch_batches(10, 4, 1, 0, true).len(), 2);
    }

    #[test]
    fn bad_csv_is_an_error() {
        let dir = std::env::temp_dir().join(format!("digits-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("d.csv");
        std::fs::write(&p, "1,2,3\n").unwrap();
        let e = load_digits(&p).unwrap_err().to_string();
        assert!(e.contains("d.csv:1") && e.contains("65"), "{e}");
        let mut row = vec!["0"; 64];
        row.push("12");
        std::fs::write(&p, row.join(",")).unwrap();
        assert!(load_digits(&p)
            .unwrap_err()
            .to_string()
            .contains("not a digit"));
        assert!(load_digits(dir.join("none.csv"))
            .unwrap_err()
            .to_string()
            .contains("fetch_digits"));
        std::fs::remove_dir_all(dir).ok();
    }
}
