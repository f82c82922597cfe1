//! A PyTorch state_dict saved with safetensors loads into the matching tensor-nn model with a
//! strict `load_state_dict`, buffers included, and gives PyTorch's logits. Fixture written by
//! `tools/make_nn_checkpoint_fixtures.py` (which also checks the other direction).

use std::path::PathBuf;

use tensor_core::{DType, Result, Tensor};
use tensor_nn::checkpoint::load_safetensors;
use tensor_nn::{
    batch_norm, conv2d, linear, Activation, ConvConfig, Flatten, ModuleT, Pool, Sequential,
    VarBuilder, VarMap,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoint")
        .join(name)
}

fn tensor(v: &serde_json::Value, dev: &tensor_core::Device) -> Result<Tensor> {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    let data: Vec<f64> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| d.as_f64().expect("number"))
        .collect();
    Tensor::from_vec(data, shape, dev)
}

#[test]
fn torch_state_dict_loads_strictly_and_matches_logits() -> Result<()> {
    let dev = tensor_cpu::device();
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F64, &dev);
    let same = ConvConfig {
        padding: 1,
        ..Default::default()
    };
    let model = Sequential::new()
        .add(conv2d(&vb.pp("conv1"), 1, 16, 3, same)?)
        .add(batch_norm(&vb.pp("bn"), 16)?)
        .add(Activation::Relu)
        .add(conv2d(&vb.pp("conv2"), 16, 32, 3, same)?)
        .add(Activation::Relu)
        .add(Pool::max2d(2))
        .add(Flatten::default())
        .add(linear(&vb.pp("fc1"), 512, 128)?)
        .add(Activation::Relu)
        .add(linear(&vb.pp("fc2"), 128, 10)?);
    let (sd, _) = load_safetensors(fixture("torch_cnn.safetensors"), &dev)?;
    let (missing, unexpected) = vars.load_state_dict(&sd, true)?;
    assert!(missing.is_empty() && unexpected.is_empty());
    let io: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("torch_cnn_io.json")).unwrap())
            .unwrap();
    let x = tensor(&io["input"], &dev)?;
    let want = tensor(&io["logits"], &dev)?.to_f64_vec()?;
    let got = model.forward_t(&x, false)?.to_f64_vec()?;
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-10, "{g} vs {w}");
    }
    // A state_dict missing a buffer is refused by the strict load.
    let mut partial = sd.clone();
    partial.remove("bn.running_var");
    assert!(vars.load_state_dict(&partial, true).is_err());
    Ok(())
}
