//! Optimizer parity with PyTorch: the MLP and the small conv net of
//! `tools/make_nn_optim_fixtures.py`, built here from raw tensor ops (no modules or losses of
//! this crate), trained for 20 steps from the same weights and batches with each optimizer
//! under the warmup-cosine schedule; every loss and every final weight must match PyTorch's
//! within 1e-5 (f32). Also the LR schedulers against `schedulers.json`.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{Map, Value};
use tensor_core::{DType, Device, Result, Tensor, Var};
use tensor_nn::lr_scheduler::*;
use tensor_nn::optim::*;

/// Every training case the fixture script writes (a test checks the folder agrees).
const CASES: &[&str] = &[
    "mlp_sgd",
    "mlp_adam",
    "mlp_adamw_amsgrad",
    "mlp_rmsprop_centered",
    "mlp_adagrad",
    "mlp_lion",
    "conv_sgd",
    "conv_adam",
    "conv_adamw_amsgrad",
    "conv_rmsprop_centered",
    "conv_adagrad",
    "conv_lion",
];

/// `|ours − torch| <= RTOL·|torch| + ATOL_FRAC·RTOL·max|torch|`: relative, with a floor of a
/// tenth of the tolerance at the tensor's scale, for weights that cancelled to nearly zero
/// (an entry of 7e-5 in a tensor of ±0.17, reached by lr-0.1 steps, carries the rounding of
/// those steps; losses use no floor).
const RTOL: f64 = 1e-5;
const ATOL_FRAC: f64 = 0.1;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/optim")
}

fn load(name: &str) -> Value {
    let p = dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn dev() -> Device {
    tensor_cpu::device()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

fn tensor(v: &Value) -> Tensor {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    if v.get("dtype").and_then(Value::as_str) == Some("i64") {
        let data: Vec<i64> = v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|x| x.as_i64().expect("int"))
            .collect();
        Tensor::from_vec(data, shape, &dev()).unwrap()
    } else {
        Tensor::from_f64s(&f64s(&v["data"]), shape, DType::F32, &dev()).unwrap()
    }
}

// ---- the networks, from raw ops -------------------------------------------------------------

fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.matmul(&w.t()?)?.add(b)
}

fn forward(net: &str, p: &HashMap<String, Var>, x: &Tensor) -> Result<Tensor> {
    match net {
        "mlp" => {
            let h = linear(x, &p["fc1.weight"], &p["fc1.bias"])?.tanh()?;
            linear(&h, &p["fc2.weight"], &p["fc2.bias"])
        }
        "conv" => {
            let h = x
                .conv2d(&p["conv.weight"], Some(&p["conv.bias"]), 1, 0, 1, 1)?
                .relu()?
                .max_pool2d(2, 2, 0)?;
            linear(&h.flatten(1, -1)?, &p["fc.weight"], &p["fc.bias"])
        }
        other => panic!("unknown net {other}"),
    }
}

/// Mean cross-entropy of `logits: [B, C]` against class indices `y: [B]`.
fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let lp = logits.log_softmax(-1)?;
    lp.gather(&y.unsqueeze(1)?, 1)?.mean_all()?.neg()
}

// ---- optimizers from the fixture's hyper-parameters -----------------------------------------

/// A group's named parameters and its hyper-parameters (the case's, with overrides).
type GroupSpec = (Vec<(String, Var)>, Map<String, Value>);

fn num(m: &Map<String, Value>, k: &str) -> f64 {
    m[k].as_f64()
        .unwrap_or_else(|| panic!("hyper-parameter {k}"))
}

fn flag(m: &Map<String, Value>, k: &str) -> bool {
    m.get(k).and_then(Value::as_bool).unwrap_or(false)
}

fn betas(m: &Map<String, Value>) -> (f64, f64) {
    let b = f64s(&m["betas"]);
    (b[0], b[1])
}

fn build<C: OptimizerConfig + 'static>(
    groups: Vec<GroupSpec>,
    config: impl Fn(&Map<String, Value>) -> C,
) -> Box<dyn Optimizer> {
    let groups = groups
        .into_iter()
        .map(|(params, hp)| ParamGroup::new(params, config(&hp)))
        .collect();
    Box::new(Optim::<C>::with_groups(groups).unwrap())
}

fn optimizer(hp: &Map<String, Value>, groups: Vec<GroupSpec>) -> Box<dyn Optimizer> {
    match hp["name"].as_str().unwrap() {
        "sgd" => build(groups, |m| SgdConfig {
            lr: num(m, "lr"),
            momentum: num(m, "momentum"),
            dampening: num(m, "dampening"),
            weight_decay: num(m, "weight_decay"),
            nesterov: flag(m, "nesterov"),
            maximize: false,
        }),
        "adam" => build(groups, |m| AdamConfig {
            lr: num(m, "lr"),
            betas: betas(m),
            eps: num(m, "eps"),
            weight_decay: num(m, "weight_decay"),
            amsgrad: flag(m, "amsgrad"),
            maximize: false,
        }),
        "adamw" => build(groups, |m| AdamWConfig {
            lr: num(m, "lr"),
            betas: betas(m),
            eps: num(m, "eps"),
            weight_decay: num(m, "weight_decay"),
            amsgrad: flag(m, "amsgrad"),
            maximize: false,
        }),
        "rmsprop" => build(groups, |m| RmsPropConfig {
            lr: num(m, "lr"),
            alpha: num(m, "alpha"),
            eps: num(m, "eps"),
            weight_decay: num(m, "weight_decay"),
            momentum: num(m, "momentum"),
            centered: flag(m, "centered"),
            maximize: false,
        }),
        "adagrad" => build(groups, |m| AdagradConfig {
            lr: num(m, "lr"),
            lr_decay: num(m, "lr_decay"),
            weight_decay: num(m, "weight_decay"),
            initial_accumulator_value: num(m, "initial_accumulator_value"),
            eps: num(m, "eps"),
            maximize: false,
        }),
        "lion" => build(groups, |m| LionConfig {
            lr: num(m, "lr"),
            betas: betas(m),
            weight_decay: num(m, "weight_decay"),
        }),
        other => panic!("unknown optimizer {other}"),
    }
}

/// Worst `|a − b| / (RTOL·|b| + ATOL_FRAC·RTOL·scale)` (≤ 1 passes).
fn worst(ours: &[f64], torch: &[f64], scale: f64) -> (f64, usize) {
    let mut w = (0.0, 0);
    for (i, (a, b)) in ours.iter().zip(torch).enumerate() {
        let r = (a - b).abs() / (RTOL * b.abs() + ATOL_FRAC * RTOL * scale);
        if r > w.0 || r.is_nan() {
            w = (r, i);
        }
    }
    w
}

fn run_case(case: &str) {
    let fx = load(case);
    let net = fx["net"].as_str().unwrap();
    let data = load(&format!("{net}_data"));
    let params: HashMap<String, Var> = data["init"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), Var::from_tensor(&tensor(v)).unwrap()))
        .collect();
    let hp = fx["optimizer"].as_object().unwrap().clone();
    let groups = fx["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let names: Vec<(String, Var)> = g["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| {
                    let n = n.as_str().unwrap().to_string();
                    let v = params[&n].clone();
                    (n, v)
                })
                .collect();
            let mut m = hp.clone();
            for (k, v) in g["overrides"].as_object().unwrap() {
                m.insert(k.clone(), v.clone());
            }
            (names, m)
        })
        .collect();
    let mut opt = optimizer(&hp, groups);
    let sch = &fx["schedule"];
    let lr = num(&hp, "lr");
    let schedule = warmup_cosine(
        lr,
        sch["warmup"].as_u64().unwrap() as usize,
        sch["total"].as_u64().unwrap() as usize,
        sch["min_lr_factor"].as_f64().unwrap() * lr,
    )
    .unwrap();
    let clip = fx["clip_norm"].as_f64();
    let ordered: Vec<&Tensor> = params.values().map(|v| v.as_tensor()).collect();

    let (want_lrs, want_losses) = (f64s(&fx["lrs"]), f64s(&fx["losses"]));
    let mut losses = Vec::new();
    for (t, batch) in data["batches"].as_array().unwrap().iter().enumerate() {
        let lr_t = schedule.lr_at(t);
        assert!(
            (lr_t - want_lrs[t]).abs() <= 1e-12 * want_lrs[t],
            "{case}: lr of step {t}: {lr_t} vs torch {}",
            want_lrs[t]
        );
        schedule.apply(opt.as_mut(), t);
        let (x, y) = (tensor(&batch["x"]), tensor(&batch["y"]));
        let loss = cross_entropy(&forward(net, &params, &x).unwrap(), &y).unwrap();
        let mut grads = loss.backward().unwrap();
        if let Some(max_norm) = clip {
            clip_grad_norm(&mut grads, &ordered, max_norm, 2.0).unwrap();
        }
        opt.step(&grads).unwrap();
        losses.push(loss.to_f64().unwrap());
    }
    let mut report = Vec::new();
    let (w, i) = worst(&losses, &want_losses, 0.0);
    report.push(format!(
        "losses: worst {w:.3} at step {i} ({} vs torch {})",
        losses[i], want_losses[i]
    ));
    let mut ok = w <= 1.0;
    for (name, want) in fx["final"].as_object().unwrap() {
        let want = f64s(&want["data"]);
        let ours = params[name].to_f64_vec().unwrap();
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let (w, i) = worst(&ours, &want, scale);
        ok &= w <= 1.0;
        report.push(format!(
            "{name}: worst {w:.3} at {i} ({} vs torch {})",
            ours[i], want[i]
        ));
    }
    println!("{case}:\n  {}", report.join("\n  "));
    assert!(ok, "{case} differs from torch:\n  {}", report.join("\n  "));
}

macro_rules! parity_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            run_case(stringify!($name));
        }
    )*};
}

parity_tests!(
    mlp_sgd,
    mlp_adam,
    mlp_adamw_amsgrad,
    mlp_rmsprop_centered,
    mlp_adagrad,
    mlp_lion,
    conv_sgd,
    conv_adam,
    conv_adamw_amsgrad,
    conv_rmsprop_centered,
    conv_adagrad,
    conv_lion,
);

#[test]
fn case_list_matches_the_fixture_folder() {
    let mut found: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with("_data") && n != "schedulers")
        .collect();
    found.sort();
    let mut listed: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed);
}

// ---- schedulers --------------------------------------------------------------------------------

fn scheduler(name: &str, p: &Map<String, Value>, base: f64) -> Box<dyn LrScheduler> {
    let u = |k: &str| p[k].as_u64().unwrap() as usize;
    let f = |k: &str| p[k].as_f64().unwrap();
    match name {
        "constant" => {
            Box::new(ConstantLr::with_factor(base, f("factor"), u("total_iters")).unwrap())
        }
        "linear_warmup" | "linear_decay" => Box::new(
            LinearWarmup::new(base, f("start_factor"), f("end_factor"), u("total_iters")).unwrap(),
        ),
        "cosine" => Box::new(CosineAnnealing::new(base, u("t_max"), f("eta_min")).unwrap()),
        "cosine_restarts" | "cosine_restarts_mult2" => Box::new(
            CosineAnnealingWarmRestarts::new(base, u("t_0"), u("t_mult"), f("eta_min")).unwrap(),
        ),
        "step" => Box::new(StepLr::new(base, u("step_size"), f("gamma")).unwrap()),
        "multistep" => {
            let ms = f64s(&p["milestones"]).iter().map(|&m| m as usize).collect();
            Box::new(MultiStepLr::new(base, ms, f("gamma")).unwrap())
        }
        "exponential" => Box::new(ExponentialLr::new(base, f("gamma")).unwrap()),
        "polynomial" => Box::new(PolynomialLr::new(base, u("total_iters"), f("power")).unwrap()),
        "cyclic_triangular" | "cyclic_triangular2" | "cyclic_exp_range" => {
            let mode = match p["mode"].as_str().unwrap() {
                "triangular" => CyclicMode::Triangular,
                "triangular2" => CyclicMode::Triangular2,
                _ => CyclicMode::ExpRange { gamma: f("gamma") },
            };
            let down = p["step_size_down"].as_u64().map(|d| d as usize);
            Box::new(
                CyclicLr::new(f("base_lr"), f("max_lr"), u("step_size_up"), down, mode).unwrap(),
            )
        }
        "onecycle_cos" | "onecycle_linear_three_phase" => Box::new(
            OneCycleLr {
                max_lr: f("max_lr"),
                total_steps: u("total_steps"),
                pct_start: f("pct_start"),
                anneal: if p["anneal"] == "cos" {
                    AnnealStrategy::Cos
                } else {
                    AnnealStrategy::Linear
                },
                div_factor: f("div_factor"),
                final_div_factor: f("final_div_factor"),
                three_phase: p["three_phase"].as_bool().unwrap(),
            }
            .validated()
            .unwrap(),
        ),
        "sequential" => Box::new(
            SequentialLr::new(
                vec![
                    Box::new(LinearWarmup::new(base, 0.1, 1.0, 10).unwrap()),
                    Box::new(ExponentialLr::new(base, 0.9).unwrap()),
                    Box::new(StepLr::new(base, 5, 0.5).unwrap()),
                ],
                vec![10, 25],
            )
            .unwrap(),
        ),
        "warmup_cosine" => {
            Box::new(warmup_cosine(base, u("warmup"), u("total"), f("min_lr")).unwrap())
        }
        other => panic!("no scheduler for fixture case {other}"),
    }
}

#[test]
fn schedulers_match_torch() {
    let fx = load("schedulers");
    let base = fx["base_lr"].as_f64().unwrap();
    for c in fx["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let s = scheduler(name, c["params"].as_object().unwrap(), base);
        for (t, want) in f64s(&c["lrs"]).into_iter().enumerate() {
            let got = s.lr_at(t);
            // Torch's chainable forms accumulate rounding; values that should be 0 come out
            // as ~1e-18.
            assert!(
                (got - want).abs() <= 1e-10 * want.abs() + 1e-15,
                "{name} step {t}: {got} vs torch {want} ({})",
                c["reference"]
            );
        }
    }
}
