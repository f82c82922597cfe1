//! Reference quantize/dequantize against ggml's own bytes and the `gguf` Python package's
//! values, from the fixtures that tools/make_quant_fixtures.py writes (see its docstring for
//! where each file comes from).

use std::path::{Path, PathBuf};

use tensor_core::quant::{dequantize, dequantize_into, quantize, quantize_into, GgmlType};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant")
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture(name: &str) -> Vec<u8> {
    read(&fixture_dir(), name)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// (type, kind) for each line of manifest.txt; kind is "quantize" or "dequantize".
fn manifest(dir: &Path) -> Vec<(GgmlType, String)> {
    let text = String::from_utf8(read(dir, "manifest.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("cases "))
        .map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next().unwrap();
            let ty = *GgmlType::ALL
                .iter()
                .find(|t| t.name() == name)
                .unwrap_or_else(|| panic!("unknown type {name}"));
            (ty, words.next().unwrap().to_string())
        })
        .collect()
}

fn case_names(dir: &Path) -> Vec<String> {
    let text = String::from_utf8(read(dir, "manifest.txt")).unwrap();
    let line = text.lines().find(|l| l.starts_with("cases ")).unwrap();
    line.split_whitespace().skip(1).map(String::from).collect()
}

/// Compare bit patterns, so that -0.0 vs 0.0 (and NaN payloads) count as differences.
fn assert_same_bits(ty: GgmlType, what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{ty} {what}: length");
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    assert!(
        bad.is_empty(),
        "{ty} {what}: {} values differ, first at {}: {} vs {}",
        bad.len(),
        bad[0],
        got[bad[0]],
        want[bad[0]]
    );
}

/// Quantize the inputs of `dir` to every type its manifest lists and compare with ggml's
/// bytes; returns how many types were checked.
fn check_quantize(dir: &Path) -> usize {
    let inputs = f32s(&read(dir, "inputs.f32"));
    let cases = case_names(dir);
    let case_len = inputs.len() / cases.len();
    let mut checked = 0;
    for (ty, kind) in manifest(dir) {
        if kind != "quantize" {
            continue;
        }
        let want = read(dir, &format!("{}.q", ty.name()));
        let got = quantize(ty, &inputs).unwrap();
        assert_eq!(got.len(), want.len(), "{ty}: byte count");
        // Report the first differing case by name: that says which edge case broke.
        let case_bytes = want.len() / cases.len();
        for (c, name) in cases.iter().enumerate() {
            let range = c * case_bytes..(c + 1) * case_bytes;
            if got[range.clone()] != want[range.clone()] {
                let first = range.clone().find(|&i| got[i] != want[i]).unwrap();
                panic!(
                    "{ty}: bytes differ from ggml in case {name} (elements {}..{}), first at \
                     byte {} of the case: {:#04x} vs {:#04x}",
                    c * case_len,
                    (c + 1) * case_len,
                    first - range.start,
                    got[first],
                    want[first]
                );
            }
        }
        checked += 1;
    }
    checked
}

#[test]
fn quantize_matches_ggml_bytes() {
    // Every type we claim to quantize has a fixture.
    let claimed = GgmlType::ALL.iter().filter(|t| t.can_quantize()).count();
    assert_eq!(check_quantize(&fixture_dir()), claimed);
}

/// The same against many more random blocks: `--stress DIR` of tools/make_quant_fixtures.py.
#[test]
#[ignore = "needs QUANT_STRESS_DIR from tools/make_quant_fixtures.py --stress"]
fn quantize_matches_ggml_bytes_stress() {
    let dir = std::env::var("QUANT_STRESS_DIR").expect("set QUANT_STRESS_DIR");
    assert!(check_quantize(Path::new(&dir)) > 0);
}

#[test]
fn dequantize_matches_reference_values() {
    let mut checked = Vec::new();
    for (ty, kind) in manifest(&fixture_dir()) {
        let (data, values) = if kind == "quantize" {
            (format!("{}.q", ty.name()), format!("{}.f32", ty.name()))
        } else {
            (
                format!("{}.blocks", ty.name()),
                format!("{}.blocks.f32", ty.name()),
            )
        };
        let got = dequantize(ty, &fixture(&data)).unwrap();
        assert_same_bits(ty, "dequantize", &got, &f32s(&fixture(&values)));
        checked.push(ty);
    }
    for ty in GgmlType::ALL.into_iter().filter(|t| t.can_dequantize()) {
        if ty.is_quantized() || ty == GgmlType::BF16 || ty == GgmlType::F16 {
            assert!(checked.contains(&ty), "{ty} has no dequantize fixture");
        }
    }
}

/// A deterministic, roughly normal sample (sum of uniforms) without a rand dependency.
fn sample(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| (0..4).map(|_| uniform()).sum::<f32>() - 2.0)
        .collect()
}

#[test]
fn round_trip_error_is_bounded() {
    // Relative RMS error bounds on roughly normal data, with headroom over what each format
    // achieves (bits per weight ~ 2.6 for Q2_K up to 8.5 for Q8_0).
    use GgmlType::*;
    let bounds = [
        (F32, 0.0),
        (F16, 1e-3),
        (BF16, 5e-3),
        (Q8_0, 0.01),
        (Q8_1, 0.01),
        (Q8_K, 0.01),
        (Q6_K, 0.03),
        (Q5_0, 0.06),
        (Q5_1, 0.06),
        (Q5_K, 0.05),
        (Q4_0, 0.12),
        (Q4_1, 0.12),
        (Q4_K, 0.1),
        (IQ4_NL, 0.1),
        (IQ4_XS, 0.1),
        (MXFP4, 0.2),
        (Q3_K, 0.25),
        (Q2_K, 0.45),
        (TQ2_0, 0.9),
        (TQ1_0, 0.9),
        (Q1_0, 0.7),
    ];
    let x = sample(4 * 256, 7);
    let norm = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
    for ty in GgmlType::ALL.into_iter().filter(|t| t.can_quantize()) {
        let bound = bounds
            .iter()
            .find(|(t, _)| *t == ty)
            .unwrap_or_else(|| panic!("no error bound for {ty}"))
            .1;
        let y = dequantize(ty, &quantize(ty, &x).unwrap()).unwrap();
        let err = (x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            / x.len() as f32)
            .sqrt();
        assert!(
            err <= bound * norm,
            "{ty}: relative RMS error {} > {bound}",
            err / norm
        );
    }
}

#[test]
fn bad_lengths_are_errors() {
    let err = quantize(GgmlType::Q4_K, &[0.0; 100])
        .unwrap_err()
        .to_string();
    assert!(err.contains("Q4_K") && err.contains("100"), "{err}");
    let err = quantize_into(GgmlType::Q8_0, &[0.0; 32], &mut [0; 33])
        .unwrap_err()
        .to_string();
    assert!(err.contains("Q8_0") && err.contains("33"), "{err}");
    assert!(quantize_into(GgmlType::Q4_0, &[0.0; 64], &mut [0; 18]).is_err());
    assert!(dequantize_into(GgmlType::IQ2_XXS, &[0; 66], &mut [0.0; 256]).is_ok());
    assert!(dequantize_into(GgmlType::IQ2_XXS, &[0; 66], &mut [0.0; 255]).is_err());
    assert!(dequantize(GgmlType::IQ1_M, &[0; 55]).is_err());
    // Empty input is zero blocks, not an error.
    assert!(quantize(GgmlType::Q6_K, &[]).unwrap().is_empty());
}

#[test]
fn support_flags_match_behaviour() {
    for ty in GgmlType::ALL {
        let x = vec![0.5f32; ty.block_size()];
        let q = quantize(ty, &x);
        assert_eq!(
            q.is_ok(),
            ty.can_quantize(),
            "{ty}: quantize vs can_quantize"
        );
        let data = vec![0u8; ty.type_size()];
        let y = dequantize(ty, &data);
        assert_eq!(
            y.is_ok(),
            ty.can_dequantize(),
            "{ty}: dequantize vs can_dequantize"
        );
        if let Err(e) = q {
            assert!(e.to_string().contains(ty.name()), "{e}");
        }
    }
}

#[test]
fn non_finite_input_does_not_panic() {
    // ggml gives such blocks no meaning; we only promise no panic and the right length.
    let mut x = sample(256, 3);
    x[5] = f32::NAN;
    x[77] = f32::INFINITY;
    x[200] = f32::NEG_INFINITY;
    let subnormal: Vec<f32> = sample(256, 4).iter().map(|v| v * 1e-40).collect();
    for ty in GgmlType::ALL.into_iter().filter(|t| t.can_quantize()) {
        for input in [&x, &subnormal] {
            let q = quantize(ty, input).unwrap();
            assert_eq!(q.len(), 256 / ty.block_size() * ty.type_size());
            dequantize(ty, &q).unwrap();
        }
    }
}
