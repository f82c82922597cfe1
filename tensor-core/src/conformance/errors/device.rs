//! Error cases: device mismatches. Only one device of the backend is needed: the device
//! under test wrapped in [`OtherDevice`] — the same kernels under another name — counts as a
//! different device for core, which compares device names.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![case("device_mismatch", device_mismatch)]
}

fn device_mismatch(d: &Device) -> Result<()> {
    let other = Device::new(Arc::new(OtherDevice(d.clone())));
    let (dn, on) = (d.name(), other.name());
    let mut c = Checks::new();
    let a = f32s(d, &[2, 3])?;
    let b = f32s(&other, &[2, 3])?;
    c.err("add across devices", || a.add(&b), &["add", &dn, &on]);
    c.err("eq across devices", || a.eq(&b), &["eq", &dn, &on]);
    c.err(
        "matmul across devices",
        || a.matmul(&f32s(&other, &[3, 2])?),
        &["matmul", &dn, &on],
    );
    c.err(
        "cat across devices",
        || Tensor::cat(&[&a, &b], 0),
        &["cat", &dn, &on],
    );
    let cond = Tensor::ones((2, 3), DType::U8, &other)?;
    c.err(
        "where condition on another device",
        || cond.where_cond(&a, &a),
        &["where", &dn, &on],
    );
    c.err(
        "index_select ids on another device",
        || a.index_select(&ids(&other, &[0])?, 0),
        &["index_select", &dn, &on],
    );
    c.err(
        "gather ids on another device",
        || a.gather(&Tensor::zeros((2, 3), DType::I64, &other)?, 1),
        &["gather", &dn, &on],
    );
    c.err(
        "scatter_add src on another device",
        || a.scatter_add(&Tensor::zeros((2, 3), DType::I64, d)?, &b, 1),
        &["scatter_add", &dn, &on],
    );
    c.err(
        "conv weight on another device",
        || f32s(d, &[1, 2, 5])?.conv1d(&f32s(&other, &[1, 2, 3])?, None, 1, 0, 1, 1),
        &["conv", &dn, &on],
    );
    c.err(
        "layer_norm weight on another device",
        || a.layer_norm(Some(&f32s(&other, &[3])?), None, 1e-5),
        &["layer_norm", &dn, &on],
    );
    let q = f32s(d, &[1, 1, 2, 4])?;
    let k = f32s(&other, &[1, 1, 2, 4])?;
    c.err(
        "attention k on another device",
        || {
            q.scaled_dot_product_attention(
                &k,
                &q,
                &AttentionParams {
                    scale: 1.0,
                    ..Default::default()
                },
            )
        },
        &["attention", &dn, &on],
    );
    c.err(
        "copy_from another device",
        || a.copy_from(&b),
        &["copy_from", &dn, &on],
    );
    // Moving is the way across, and it round-trips.
    let back = b.to_device(d)?;
    if !back.device().same_device(d) || back.to_f64_vec()? != b.to_f64_vec()? {
        c.fail("to_device across devices did not round-trip".into());
    }
    let v = Var::from_tensor(&f32s(d, &[2, 3])?.to_dtype(DType::F64)?)?;
    match v.to_device(&other)?.sqr()?.sum_all()?.backward() {
        Ok(g) => match g.get(v.as_tensor()) {
            Some(gv) if gv.device().same_device(d) => {}
            Some(gv) => c.fail(format!(
                "gradient through to_device landed on {}",
                gv.device().name()
            )),
            None => c.fail("no gradient through to_device".into()),
        },
        Err(e) => c.fail(format!("backward through to_device failed: {e}")),
    }
    c.finish()
}

/// The device under test, renamed: a distinct device for core, the same kernels underneath.
#[derive(Debug)]
struct OtherDevice(Device);

impl BackendDevice for OtherDevice {
    fn name(&self) -> String {
        format!("{}-other", self.0.name())
    }
    fn from_host(&self, data: HostData) -> Result<Storage> {
        self.0.backend().from_host(data)
    }
    fn to_host(&self, s: &dyn BackendStorage, layout: &Layout) -> Result<HostData> {
        self.0.backend().to_host(s, layout)
    }
    fn full(&self, n: usize, value: f64, dtype: DType) -> Result<Storage> {
        self.0.backend().full(n, value, dtype)
    }
    fn rand_uniform(&self, n: usize, lo: f64, hi: f64, dtype: DType, seed: u64) -> Result<Storage> {
        self.0.backend().rand_uniform(n, lo, hi, dtype, seed)
    }
    fn rand_normal(
        &self,
        n: usize,
        mean: f64,
        std: f64,
        dtype: DType,
        seed: u64,
    ) -> Result<Storage> {
        self.0.backend().rand_normal(n, mean, std, dtype, seed)
    }
    fn copy_strided(&self, s: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        self.0.backend().copy_strided(s, layout)
    }
    fn copy_into(
        &self,
        dst: &mut dyn BackendStorage,
        dst_l: &Layout,
        src: &dyn BackendStorage,
        src_l: &Layout,
    ) -> Result<()> {
        self.0.backend().copy_into(dst, dst_l, src, src_l)
    }
    fn cast(&self, s: &dyn BackendStorage, layout: &Layout, dtype: DType) -> Result<Storage> {
        self.0.backend().cast(s, layout, dtype)
    }
    fn unary(&self, op: UnaryOp, s: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        self.0.backend().unary(op, s, layout)
    }
    fn binary(
        &self,
        op: BinaryOp,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage> {
        self.0.backend().binary(op, lhs, lhs_l, rhs, rhs_l)
    }
    fn cmp(
        &self,
        op: CmpOp,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage> {
        self.0.backend().cmp(op, lhs, lhs_l, rhs, rhs_l)
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
        self.0
            .backend()
            .where_cond(cond, cond_l, on_true, t_l, on_false, f_l)
    }
    fn reduce(
        &self,
        op: ReduceOp,
        s: &dyn BackendStorage,
        layout: &Layout,
        dims: &[usize],
    ) -> Result<Storage> {
        self.0.backend().reduce(op, s, layout, dims)
    }
    fn cumsum(&self, s: &dyn BackendStorage, layout: &Layout, dim: usize) -> Result<Storage> {
        self.0.backend().cumsum(s, layout, dim)
    }
    fn matmul(
        &self,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage> {
        self.0.backend().matmul(lhs, lhs_l, rhs, rhs_l)
    }
    fn index_select(
        &self,
        src: &dyn BackendStorage,
        src_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        self.0.backend().index_select(src, src_l, ids, ids_l, dim)
    }
    fn gather(
        &self,
        src: &dyn BackendStorage,
        src_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        self.0.backend().gather(src, src_l, ids, ids_l, dim)
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
        self.0
            .backend()
            .scatter_add(dst, dst_l, ids, ids_l, src, src_l, dim)
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
        self.0
            .backend()
            .index_add(dst, dst_l, ids, ids_l, src, src_l, dim)
    }
    fn unfold(&self, s: &dyn BackendStorage, layout: &Layout, p: &UnfoldParams) -> Result<Storage> {
        self.0.backend().unfold(s, layout, p)
    }
    fn fold(
        &self,
        s: &dyn BackendStorage,
        layout: &Layout,
        p: &UnfoldParams,
        out_spatial: &[usize],
    ) -> Result<Storage> {
        self.0.backend().fold(s, layout, p, out_spatial)
    }
}
