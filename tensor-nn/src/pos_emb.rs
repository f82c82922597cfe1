//! Absolute positional embeddings added to token embeddings: a learned table (GPT-2, BERT,
//! BART with its offset of 2) and the fixed sinusoids of "Attention Is All You Need"
//! (sin on even dims, cos on odd dims, as the PyTorch tutorial's `PositionalEncoding`).

use tensor_core::{DType, Device, Error, Result, Tensor};

use crate::init::Init;
use crate::module::Module;
use crate::var_builder::VarBuilder;

/// Rows `start..start+len` of `table`, with a clear error past its end.
fn rows(table: &Tensor, start: usize, len: usize, what: &'static str) -> Result<Tensor> {
    let n = table.dims()[0];
    if start.checked_add(len).is_none_or(|end| end > n) {
        return Err(Error::invalid(
            what,
            format!(
                "positions {start}..{} exceed the table of {n} positions",
                start.saturating_add(len)
            ),
        ));
    }
    table.narrow(0, start, len)
}

/// `x + pe` for `x: [B, L, D]` or `[L, D]` with `pe: [L, D]`.
fn add_rows(x: &Tensor, pe: &Tensor, what: &'static str) -> Result<Tensor> {
    let d = pe.dims()[1];
    if !(x.rank() == 2 || x.rank() == 3) || x.dims()[x.rank() - 1] != d {
        return Err(Error::UnexpectedShape {
            op: what,
            expected: format!("[B, L, {d}] or [L, {d}]"),
            got: x.shape().clone(),
        });
    }
    let pe = if pe.dtype() == x.dtype() {
        pe.clone()
    } else {
        pe.to_dtype(x.dtype())?
    };
    x.add(&pe)
}

/// A trained `[offset + max_positions, dim]` table (`weight`); position `p` reads row
/// `p + offset` (BART reserves 2 rows, most models 0).
#[derive(Clone, Debug)]
pub struct LearnedPositionalEmbedding {
    pub weight: Tensor,
    pub offset: usize,
}

impl LearnedPositionalEmbedding {
    /// A table initialised like `nn.Embedding` (N(0, 1)).
    pub fn build(
        vb: &VarBuilder,
        max_positions: usize,
        dim: usize,
        offset: usize,
    ) -> Result<LearnedPositionalEmbedding> {
        let weight = vb.get_with_init(
            (max_positions + offset, dim),
            "weight",
            Init::Normal {
                mean: 0.0,
                std: 1.0,
            },
        )?;
        Ok(LearnedPositionalEmbedding { weight, offset })
    }

    pub fn new(weight: Tensor, offset: usize) -> Result<LearnedPositionalEmbedding> {
        if weight.rank() != 2 || weight.dims()[0] <= offset {
            return Err(Error::invalid(
                "LearnedPositionalEmbedding",
                format!(
                    "table must be [offset + positions, dim] with offset {offset}, got {:?}",
                    weight.dims()
                ),
            ));
        }
        Ok(LearnedPositionalEmbedding { weight, offset })
    }

    pub fn max_positions(&self) -> usize {
        self.weight.dims()[0] - self.offset
    }

    /// The embeddings `[len, dim]` of positions `start..start+len`.
    pub fn positions(&self, start: usize, len: usize) -> Result<Tensor> {
        if start
            .checked_add(len)
            .is_none_or(|e| e > self.max_positions())
        {
            return Err(Error::invalid(
                "LearnedPositionalEmbedding",
                format!(
                    "positions {start}..{} exceed the {} learned positions",
                    start.saturating_add(len),
                    self.max_positions()
                ),
            ));
        }
        rows(
            &self.weight,
            start + self.offset,
            len,
            "LearnedPositionalEmbedding",
        )
    }

    /// The embeddings of explicit integer position ids (any shape), offset applied.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        if self.offset == 0 {
            return self.weight.embedding(ids);
        }
        self.weight
            .narrow(0, self.offset, self.max_positions())?
            .embedding(ids)
    }

    /// `x + pe` for tokens `x: [B, L, dim]` at positions `start..start+L`.
    pub fn forward_at(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let l = x.dims().get(x.rank().wrapping_sub(2)).copied().unwrap_or(0);
        add_rows(x, &self.positions(start, l)?, "LearnedPositionalEmbedding")
    }
}

impl Module for LearnedPositionalEmbedding {
    /// `x + pe` at positions `0..L`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_at(x, 0)
    }
}

/// The fixed table `pe[p, 2i] = sin(p / 10000^(2i/dim))`, `pe[p, 2i+1] = cos(…)`.
#[derive(Clone, Debug)]
pub struct SinusoidalPositionalEmbedding {
    pub table: Tensor,
}

impl SinusoidalPositionalEmbedding {
    pub fn new(
        max_positions: usize,
        dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<SinusoidalPositionalEmbedding> {
        Self::with_base(max_positions, dim, 10000.0, dtype, device)
    }

    /// With another base than 10000.
    pub fn with_base(
        max_positions: usize,
        dim: usize,
        base: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<SinusoidalPositionalEmbedding> {
        if dim == 0 || !dim.is_multiple_of(2) || max_positions == 0 || base.is_nan() || base <= 0.0
        {
            return Err(Error::invalid(
                "SinusoidalPositionalEmbedding",
                format!(
                    "need an even dim, positions and base > 0; got dim {dim}, positions \
                     {max_positions}, base {base}"
                ),
            ));
        }
        let mut t = vec![0.0; max_positions * dim];
        for p in 0..max_positions {
            for i in (0..dim).step_by(2) {
                let a = p as f64 * (-(base.ln()) * i as f64 / dim as f64).exp();
                t[p * dim + i] = a.sin();
                t[p * dim + i + 1] = a.cos();
            }
        }
        Ok(SinusoidalPositionalEmbedding {
            table: Tensor::from_f64s(&t, (max_positions, dim), dtype, device)?,
        })
    }

    /// The embeddings `[len, dim]` of positions `start..start+len`.
    pub fn positions(&self, start: usize, len: usize) -> Result<Tensor> {
        rows(&self.table, start, len, "SinusoidalPositionalEmbedding")
    }

    /// `x + pe` for tokens `x: [B, L, dim]` at positions `start..start+L`.
    pub fn forward_at(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let l = x.dims().get(x.rank().wrapping_sub(2)).copied().unwrap_or(0);
        add_rows(
            x,
            &self.positions(start, l)?,
            "SinusoidalPositionalEmbedding",
        )
    }
}

impl Module for SinusoidalPositionalEmbedding {
    /// `x + pe` at positions `0..L`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_at(x, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::var_builder::VarMap;

    #[test]
    fn sinusoids_follow_the_paper() -> Result<()> {
        let dev = tensor_cpu::device();
        let s = SinusoidalPositionalEmbedding::new(10, 4, DType::F64, &dev)?;
        let r = s.positions(3, 1)?.to_vec::<f64>()?;
        let want = [
            3f64.sin(),
            3f64.cos(),
            (3.0 / 100.0f64).sin(),
            (3.0 / 100.0f64).cos(),
        ];
        for (a, b) in r.iter().zip(want) {
            assert!((a - b).abs() < 1e-14, "{a} vs {b}");
        }
        let x = Tensor::zeros((2, 3, 4), DType::F32, &dev)?;
        assert_eq!(s.forward_at(&x, 7)?.dims(), &[2, 3, 4]);
        assert!(s.forward_at(&x, 8).is_err());
        assert!(s
            .forward(&Tensor::zeros((2, 3, 5), DType::F32, &dev)?)
            .is_err());
        assert!(SinusoidalPositionalEmbedding::new(4, 3, DType::F32, &dev).is_err());
        Ok(())
    }

    #[test]
    fn learned_table_with_offset() -> Result<()> {
        let dev = tensor_cpu::device();
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F64, &dev);
        let e = LearnedPositionalEmbedding::build(&vb.pp("embed_positions"), 6, 3, 2)?;
        assert_eq!(e.weight.dims(), &[8, 3]);
        assert_eq!(e.max_positions(), 6);
        let w = e.weight.to_vec2::<f64>()?;
        let p = e.positions(1, 2)?.to_vec2::<f64>()?;
        assert_eq!(p[0], w[3]);
        let ids = Tensor::from_vec(vec![1i64, 2], 2, &dev)?;
        assert_eq!(e.lookup(&ids)?.to_vec2::<f64>()?, p);
        assert!(e.positions(5, 2).is_err());
        let x = Tensor::zeros((1, 6, 3), DType::F64, &dev)?;
        assert_eq!(e.forward(&x)?.to_vec::<f64>()?.len(), 18);
        Ok(())
    }
}
