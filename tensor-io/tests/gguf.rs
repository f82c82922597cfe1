//! GGUF reading, dequantization and writing: bit-exact dequantization against fixtures made by
//! the `gguf` Python package (tools/make_gguf_fixtures.py), metadata of every value type, a
//! write/read round trip, corrupt files that must fail with a message naming the file and
//! tensor, and the real SmolLM2 file when it is on this machine.

use std::path::{Path, PathBuf};

use tensor_core::{bf16, f16, DType, Device, Tensor};
use tensor_io::gguf::{
    dequantize, GgmlType, GgufArray, GgufFile, GgufValue, GgufValueType, GgufWriter,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

fn device() -> Device {
    tensor_cpu::device()
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tensor-io-gguf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

// ---- fixtures from the gguf Python package ------------------------------------------------

#[test]
fn dequantization_is_bit_exact_against_gguf_py() {
    let quants = GgufFile::open(fixture("quants.gguf")).unwrap();
    let expected = GgufFile::open(fixture("quants_expected.gguf")).unwrap();
    assert_eq!(expected.alignment(), 64);
    assert_eq!(quants.tensors().len(), expected.tensors().len());
    let mut seen = Vec::new();
    for e in expected.tensors() {
        let name = e.name();
        let q = quants.tensor_info(name).unwrap();
        assert_eq!(q.dims(), e.dims(), "{name}");
        assert_eq!(q.ggml_dims(), e.ggml_dims(), "{name}");
        assert_eq!(q.ggml_type().name().to_lowercase(), name);
        let want = f32s(expected.tensor_bytes(name).unwrap());
        let got = quants.dequantize(name).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: {g} vs {w}");
        }
        // The free function agrees with the method.
        let free = dequantize(q.ggml_type(), quants.tensor_bytes(name).unwrap()).unwrap();
        assert_eq!(free, got, "{name}");
        seen.push(q.ggml_type());
    }
    use GgmlType::*;
    for ty in [
        F32, F16, BF16, F64, I8, I16, I32, I64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K,
        Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4,
    ] {
        assert!(seen.contains(&ty), "no fixture for {ty}");
        assert!(ty.can_dequantize());
    }
}

#[test]
fn fixture_metadata_of_every_value_type() {
    let f = GgufFile::open(fixture("quants.gguf")).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.architecture().unwrap(), "fixture");
    assert_eq!(f.get("test.u8"), Some(&GgufValue::U8(200)));
    assert_eq!(f.get("test.i8"), Some(&GgufValue::I8(-100)));
    assert_eq!(f.get("test.u16"), Some(&GgufValue::U16(60000)));
    assert_eq!(f.get("test.i16"), Some(&GgufValue::I16(-30000)));
    assert_eq!(f.get("test.u32"), Some(&GgufValue::U32(4_000_000_000)));
    assert_eq!(f.get("test.i32"), Some(&GgufValue::I32(-2_000_000_000)));
    assert_eq!(f.get("test.f32"), Some(&GgufValue::F32(0.1)));
    assert_eq!(f.get("test.bool"), Some(&GgufValue::Bool(true)));
    assert_eq!(f.get_str("test.string").unwrap(), "héllo, GGUF ✓");
    assert_eq!(f.get_u64("test.u64").unwrap(), 18_000_000_000_000_000_000);
    assert_eq!(f.get_i64("test.i64").unwrap(), -9_000_000_000_000_000_000);
    assert_eq!(f.get_f64("test.f64").unwrap(), 0.1);
    assert_eq!(f.get_u32("test.u8").unwrap(), 200);
    assert_eq!(f.get_i32("test.i16").unwrap(), -30000);
    assert_eq!(f.get_f32("test.f32").unwrap(), 0.1);
    assert!(f.get_bool("test.bool").unwrap());

    let arr = |k: &str| f.get_array(&format!("test.array.{k}")).unwrap().clone();
    assert_eq!(arr("uint8"), GgufArray::U8(vec![0, 1, 255]));
    assert_eq!(arr("int8"), GgufArray::I8(vec![-128, 0, 127]));
    assert_eq!(arr("uint16"), GgufArray::U16(vec![0, 65535]));
    assert_eq!(arr("int16"), GgufArray::I16(vec![-32768, 7]));
    assert_eq!(f.get_u32_array("test.array.uint32").unwrap(), [1, 2, 3]);
    assert_eq!(f.get_i32_array("test.array.int32").unwrap(), [-1, 0, 1]);
    assert_eq!(
        f.get_f32_array("test.array.float32").unwrap(),
        [0.5, -1.25, 3.0]
    );
    assert_eq!(arr("bool"), GgufArray::Bool(vec![true, false, true]));
    assert_eq!(
        f.get_str_array("test.array.string").unwrap(),
        ["a", "", "ünïcode"]
    );
    assert_eq!(arr("uint64"), GgufArray::U64(vec![1 << 63]));
    assert_eq!(arr("int64"), GgufArray::I64(vec![i64::MIN, i64::MAX]));
    assert_eq!(arr("float64"), GgufArray::F64(vec![1e300, -2.5]));
    assert_eq!(
        arr("nested"),
        GgufArray::Array(vec![
            GgufArray::I32(vec![1, 2, 3]),
            GgufArray::I32(vec![4]),
            GgufArray::I32(vec![5, 6]),
        ])
    );
    assert_eq!(
        arr("nested_str"),
        GgufArray::Array(vec![
            GgufArray::String(vec!["x".into(), "y".into()]),
            GgufArray::String(vec!["z".into()]),
        ])
    );
    // Metadata keeps file order; the writer puts the architecture first.
    assert_eq!(f.metadata()[0].0, "general.architecture");
    assert_eq!(f.metadata()[1].0, "test.u8");

    // Typed getters name the file and key when the key is missing or of another type.
    let path = fixture("quants.gguf").display().to_string();
    let err = f.get_u32("no.such.key").unwrap_err().to_string();
    assert!(
        err.contains(&path) && err.contains("'no.such.key' is missing"),
        "{err}"
    );
    let err = f.get_u32("test.i8").unwrap_err().to_string();
    assert!(
        err.contains("'test.i8'") && err.contains("fits in u32"),
        "{err}"
    );
    let err = f.get_str_array("test.array.int32").unwrap_err().to_string();
    assert!(err.contains("an array of 3 i32"), "{err}");
}

#[test]
fn fixture_tensors_keep_their_dtype() {
    let f = GgufFile::open(fixture("quants.gguf")).unwrap();
    let dev = device();
    let t = f.tensor("f32", &dev).unwrap();
    assert_eq!((t.dtype(), t.dims()), (DType::F32, &[3usize, 5][..]));
    assert_eq!(t.to_vec::<f32>().unwrap(), f.dequantize("f32").unwrap());
    let t = f.tensor("f16", &dev).unwrap();
    assert_eq!((t.dtype(), t.dims()), (DType::F16, &[2usize, 8][..]));
    assert_eq!(f.tensor("bf16", &dev).unwrap().dtype(), DType::BF16);
    let t = f.tensor("f64", &dev).unwrap();
    assert_eq!((t.dtype(), t.dims()), (DType::F64, &[2usize, 3][..]));
    for name in ["i8", "i16", "i32", "i64"] {
        let t = f.tensor(name, &dev).unwrap();
        assert_eq!(
            (t.dtype(), t.dims()),
            (DType::I64, &[2usize, 4][..]),
            "{name}"
        );
        let want: Vec<i64> = f
            .dequantize(name)
            .unwrap()
            .iter()
            .map(|&v| v as i64)
            .collect();
        assert_eq!(t.to_vec::<i64>().unwrap(), want, "{name}");
    }
    let info = f.tensor_info("q4_k").unwrap();
    assert_eq!(info.dims(), [2, 512]);
    assert_eq!(info.ggml_dims(), [512, 2]);
    assert_eq!(info.size_in_bytes(), 4 * 144);
    let t = f.tensor("q4_k", &dev).unwrap();
    assert_eq!((t.dtype(), t.dims()), (DType::F32, &[2usize, 512][..]));
    assert_eq!(t.to_vec::<f32>().unwrap(), f.dequantize("q4_k").unwrap());
}

#[test]
fn version_2_reads_like_version_3() {
    let dir = TempDir::new("v2");
    let mut bytes = std::fs::read(fixture("quants.gguf")).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let path = dir.path("v2.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let v2 = GgufFile::open(&path).unwrap();
    let v3 = GgufFile::open(fixture("quants.gguf")).unwrap();
    assert_eq!(v2.version(), 2);
    assert_eq!(v2.metadata(), v3.metadata());
    assert_eq!(v2.tensors(), v3.tensors());
    assert_eq!(
        v2.tensor_bytes("q6_k").unwrap(),
        v3.tensor_bytes("q6_k").unwrap()
    );
}

// ---- writing ------------------------------------------------------------------------------

fn every_value() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("general.architecture", "llama".into()),
        ("a.u8", 7u8.into()),
        ("a.i8", (-7i8).into()),
        ("a.u16", 65535u16.into()),
        ("a.i16", (-2i16).into()),
        ("a.u32", 123456u32.into()),
        ("a.i32", (-123456i32).into()),
        ("a.f32", 1.5f32.into()),
        ("a.bool", false.into()),
        ("a.string", "ß and ✓".into()),
        ("a.u64", u64::MAX.into()),
        ("a.i64", i64::MIN.into()),
        ("a.f64", std::f64::consts::PI.into()),
        ("a.empty", GgufValue::Array(GgufArray::F32(vec![]))),
        ("a.tokens", vec!["<s>", "</s>", "hello"].into()),
        ("a.u8s", vec![1u8, 2, 3].into()),
        ("a.bools", vec![true, false].into()),
        ("a.f64s", vec![0.25f64, -8.0].into()),
        (
            "a.nested",
            GgufArray::Array(vec![
                GgufArray::U16(vec![1, 2]),
                GgufArray::Array(vec![GgufArray::String(vec!["deep".into()])]),
                GgufArray::I64(vec![]),
            ])
            .into(),
        ),
    ]
}

#[test]
fn write_then_read_round_trips() {
    let dir = TempDir::new("roundtrip");
    let quants = GgufFile::open(fixture("quants.gguf")).unwrap();
    let dev = device();

    let mut w = GgufWriter::new();
    for (k, v) in every_value() {
        w.add_metadata(k, v).unwrap();
    }
    w.set_alignment(16).unwrap();
    let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    w.add_f32("a", &[2, 3], &a).unwrap();
    let h: Vec<f16> = (0..5).map(|i| f16::from_f32(i as f32)).collect();
    w.add_f16("h", &[5], &h).unwrap();
    let b: Vec<bf16> = (0..4).map(|i| bf16::from_f32(-(i as f32))).collect();
    w.add_bf16("b", &[1, 2, 2], &b).unwrap();
    // Raw blocks borrowed from another file, copied through untouched.
    for name in ["q4_0", "q5_k", "q8_1"] {
        let info = quants.tensor_info(name).unwrap();
        let bytes = quants.tensor_bytes(name).unwrap();
        w.add_raw(name, info.ggml_type(), info.dims(), bytes)
            .unwrap();
    }
    let d = Tensor::from_vec(vec![1.0f64, -2.0, 3.5], vec![3], &dev).unwrap();
    w.add_tensor("d", &d).unwrap();
    let path = dir.path("out.gguf");
    w.write(&path).unwrap();
    // Overwriting goes through a fresh temporary file too.
    w.write(&path).unwrap();
    let left: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
    assert_eq!(left.len(), 1, "temporary files left behind: {left:?}");

    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 16);
    let mut want: Vec<(String, GgufValue)> = every_value()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    want.push(("general.alignment".into(), GgufValue::U32(16)));
    assert_eq!(f.metadata(), &want[..]);
    assert_eq!(f.architecture().unwrap(), "llama");

    let names: Vec<_> = f.tensors().iter().map(|t| t.name()).collect();
    assert_eq!(names, ["a", "h", "b", "q4_0", "q5_k", "q8_1", "d"]);
    for t in f.tensors() {
        assert_eq!(t.offset() % 16, 0, "{}", t.name());
    }
    assert_eq!(f.data_offset() % 16, 0);
    assert_eq!(f.tensor("a", &dev).unwrap().to_vec::<f32>().unwrap(), a);
    assert_eq!(f.tensor_info("a").unwrap().ggml_dims(), [3, 2]);
    assert_eq!(f.tensor("h", &dev).unwrap().to_vec::<f16>().unwrap(), h);
    let tb = f.tensor("b", &dev).unwrap();
    assert_eq!(tb.dims(), [1, 2, 2]);
    assert_eq!(tb.to_vec::<bf16>().unwrap(), b);
    assert_eq!(
        f.tensor("d", &dev).unwrap().to_vec::<f64>().unwrap(),
        [1.0, -2.0, 3.5]
    );
    for name in ["q4_0", "q5_k", "q8_1"] {
        assert_eq!(
            f.tensor_bytes(name).unwrap(),
            quants.tensor_bytes(name).unwrap()
        );
        assert_eq!(
            f.tensor_info(name).unwrap().dims(),
            quants.tensor_info(name).unwrap().dims()
        );
        assert_eq!(
            f.dequantize(name).unwrap(),
            quants.dequantize(name).unwrap()
        );
    }
}

#[test]
fn writer_refuses_inconsistent_input() {
    let mut w = GgufWriter::new();
    w.add_metadata("k", 1u32).unwrap();
    let err = w.add_metadata("k", 2u32).unwrap_err().to_string();
    assert!(err.contains("'k' added twice"), "{err}");
    let err = w
        .add_metadata("general.alignment", 24u32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("power of two"), "{err}");
    let err = w.add_f32("t", &[2, 3], &[0.0; 5]).unwrap_err().to_string();
    assert!(
        err.contains("tensor 't'") && err.contains("20 bytes"),
        "{err}"
    );
    let err = w
        .add_raw("q", GgmlType::Q4_0, &[2, 48], vec![0u8; 54])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a multiple of the Q4_0 block size 32"),
        "{err}"
    );
    w.add_f32("t", &[1], &[0.0]).unwrap();
    assert!(w.add_f32("t", &[1], &[0.0]).is_err());
    let long = "x".repeat(64);
    assert!(w.add_f32(long, &[1], &[0.0]).is_err());
    assert!(w.add_f32("r5", &[1, 1, 1, 1, 1], &[0.0]).is_err());
    let u = Tensor::from_vec(vec![1u32, 2], vec![2], &device()).unwrap();
    assert!(w
        .add_tensor("u", &u)
        .unwrap_err()
        .to_string()
        .contains("u32"));
    let err = w.write("/nonexistent-dir/x.gguf").unwrap_err().to_string();
    assert!(err.contains("/nonexistent-dir/x.gguf"), "{err}");
}

// ---- corrupt files ------------------------------------------------------------------------

/// A small valid file and the byte positions of the fields the tests corrupt.
struct Sample {
    bytes: Vec<u8>,
    array_key: usize,
    weird: usize,
    other: usize,
    data_offset: usize,
}

fn sample(dir: &TempDir) -> Sample {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "tiny").unwrap();
    w.add_metadata("test.array", vec![1i32, 2, 3]).unwrap();
    w.add_metadata("test.flag", true).unwrap();
    w.add_metadata("test.flab", 0u8).unwrap();
    w.add_f32("weird.tensor", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .unwrap();
    let mut block = f16::from_f32(0.25).to_le_bytes().to_vec();
    block.extend((0..32).map(|i| i as u8));
    w.add_raw("other.tensor", GgmlType::Q8_0, &[1, 32], block)
        .unwrap();
    let path = dir.path("sample.gguf");
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let find = |needle: &[u8]| {
        bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    };
    Sample {
        array_key: find(b"test.array"),
        weird: find(b"weird.tensor"),
        other: find(b"other.tensor"),
        data_offset: f.data_offset() as usize,
        bytes,
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Write `bytes` and open them; the error text, which must name the file.
fn open_err(dir: &TempDir, bytes: &[u8]) -> String {
    let path = dir.path("corrupt.gguf");
    std::fs::write(&path, bytes).unwrap();
    let err = GgufFile::open(&path)
        .map(|f| format!("opened: {f:?}"))
        .expect_err("a corrupt file must not open")
        .to_string();
    assert!(
        err.contains(&path.display().to_string()),
        "error names no file: {err}"
    );
    err
}

fn assert_err(dir: &TempDir, bytes: &[u8], parts: &[&str]) {
    let err = open_err(dir, bytes);
    for p in parts {
        assert!(err.contains(p), "expected {p:?} in: {err}");
    }
}

#[test]
fn every_truncation_fails() {
    let dir = TempDir::new("truncate");
    let s = sample(&dir);
    // The data ends after the Q8_0 block; what follows is padding.
    let end = s.data_offset + 32 + 34;
    for len in 0..end {
        let err = open_err(&dir, &s.bytes[..len]);
        assert!(
            err.contains("truncated")
                || err.contains("not a GGUF")
                || err.contains("cannot fit")
                || err.contains("past the end"),
            "len {len}: {err}"
        );
    }
    GgufFile::open(dir.path("sample.gguf")).unwrap();
}

#[test]
fn header_corruptions_fail_clearly() {
    let dir = TempDir::new("header");
    let s = sample(&dir);
    let mut b = s.bytes.clone();
    b[0] = b'X';
    assert_err(&dir, &b, &["not a GGUF file"]);

    let mut b = s.bytes.clone();
    put_u32(&mut b, 4, 1);
    assert_err(&dir, &b, &["version 1 is not supported"]);
    put_u32(&mut b, 4, 3u32.swap_bytes());
    assert_err(&dir, &b, &["big-endian"]);
    put_u32(&mut b, 4, 7);
    assert_err(&dir, &b, &["unsupported GGUF version 7"]);

    let mut b = s.bytes.clone();
    put_u64(&mut b, 8, 1 << 40);
    assert_err(&dir, &b, &["tensor count 1099511627776", "cannot fit"]);
    let mut b = s.bytes.clone();
    put_u64(&mut b, 16, u64::MAX);
    assert_err(&dir, &b, &["metadata entry count", "cannot fit"]);

    // The first key's length.
    let mut b = s.bytes.clone();
    put_u64(&mut b, 24, 1 << 60);
    assert_err(
        &dir,
        &b,
        &["metadata entry #0", "string length 1152921504606846976"],
    );

    // test.array: key, then u32 type, u32 element type, u64 length.
    let at = s.array_key + "test.array".len();
    let mut b = s.bytes.clone();
    put_u64(&mut b, at + 8, 1 << 62);
    assert_err(
        &dir,
        &b,
        &["'test.array'", "array length 4611686018427387904"],
    );
    let mut b = s.bytes.clone();
    put_u32(&mut b, at + 4, 99);
    assert_err(
        &dir,
        &b,
        &["'test.array'", "unknown metadata value type 99"],
    );
    let mut b = s.bytes.clone();
    put_u32(&mut b, at, 13);
    assert_err(&dir, &b, &["unknown metadata value type 13"]);

    // test.flag's bool byte follows the 4-byte type tag.
    let mut b = s.bytes.clone();
    let flag = b.windows(9).position(|w| w == b"test.flag").unwrap() + 9 + 4;
    b[flag] = 2;
    assert_err(&dir, &b, &["'test.flag'", "value 2, expected 0 or 1"]);

    let mut b = s.bytes.clone();
    b[s.array_key] = 0xff;
    assert_err(&dir, &b, &["not valid UTF-8"]);

    let mut b = s.bytes.clone();
    let flab = b.windows(9).position(|w| w == b"test.flab").unwrap();
    b[flab + 8] = b'g';
    assert_err(&dir, &b, &["metadata key 'test.flag' appears twice"]);
}

#[test]
fn tensor_info_corruptions_name_the_tensor() {
    let dir = TempDir::new("tensor");
    let s = sample(&dir);
    // Tensor info: name, u32 n_dims, u64 dims..., u32 type, u64 offset.
    let w = s.weird + "weird.tensor".len(); // weird: 2 dims
    let o = s.other + "other.tensor".len(); // other: 2 dims
    let (w_dims, w_type, w_off) = (w + 4, w + 20, w + 24);
    let (o_dims, o_off) = (o + 4, o + 24);

    let mut b = s.bytes.clone();
    put_u32(&mut b, w_type, 99);
    assert_err(
        &dir,
        &b,
        &["tensor 'weird.tensor'", "unknown ggml type id 99"],
    );
    put_u32(&mut b, w_type, 4);
    assert_err(
        &dir,
        &b,
        &["tensor 'weird.tensor'", "unknown ggml type id 4"],
    );

    let mut b = s.bytes.clone();
    put_u64(&mut b, o_off, 1 << 40);
    assert_err(
        &dir,
        &b,
        &["tensor 'other.tensor'", "past the end of the file"],
    );
    let mut b = s.bytes.clone();
    put_u64(&mut b, o_off, u64::MAX - 31);
    assert_err(
        &dir,
        &b,
        &["tensor 'other.tensor'", "past the end of the file"],
    );
    let mut b = s.bytes.clone();
    put_u64(&mut b, w_off, 8);
    assert_err(
        &dir,
        &b,
        &["tensor 'weird.tensor'", "offset 8 is not a multiple"],
    );
    let mut b = s.bytes.clone();
    put_u64(&mut b, o_off, 33);
    assert_err(
        &dir,
        &b,
        &[
            "tensor 'other.tensor'",
            "not a multiple of the alignment 32",
        ],
    );

    let mut b = s.bytes.clone();
    put_u64(&mut b, w_dims + 8, 1 << 30);
    assert_err(
        &dir,
        &b,
        &["tensor 'weird.tensor'", "past the end of the file"],
    );
    let mut b = s.bytes.clone();
    put_u64(&mut b, w_dims, 1 << 40);
    put_u64(&mut b, w_dims + 8, 1 << 40);
    assert_err(&dir, &b, &["tensor 'weird.tensor'", "overflow"]);
    let mut b = s.bytes.clone();
    put_u64(&mut b, w_dims, 1 << 62);
    assert_err(
        &dir,
        &b,
        &["tensor 'weird.tensor'", "overflow the address space"],
    );
    let mut b = s.bytes.clone();
    put_u64(&mut b, w_dims, u64::MAX);
    assert_err(&dir, &b, &["tensor 'weird.tensor'", "negative"]);

    let mut b = s.bytes.clone();
    put_u64(&mut b, o_dims, 16);
    put_u64(&mut b, o_dims + 8, 2);
    assert_err(
        &dir,
        &b,
        &[
            "tensor 'other.tensor'",
            "not a multiple of the Q8_0 block size 32",
        ],
    );

    let mut b = s.bytes.clone();
    put_u32(&mut b, w, 5);
    assert_err(&dir, &b, &["tensor 'weird.tensor'", "5 dimensions"]);
    let mut b = s.bytes.clone();
    put_u32(&mut b, o, u32::MAX);
    assert_err(&dir, &b, &["tensor 'other.tensor'", "dimensions"]);

    // A name length past the end of the file.
    let mut b = s.bytes.clone();
    put_u64(&mut b, s.weird - 8, 1 << 60);
    assert_err(&dir, &b, &["tensor info #0", "string length"]);

    let mut b = s.bytes.clone();
    b[s.other..s.other + 5].copy_from_slice(b"weird");
    assert_err(&dir, &b, &["tensor 'weird.tensor' appears twice"]);
}

#[test]
fn bad_alignment_is_refused() {
    let dir = TempDir::new("align");
    let mut w = GgufWriter::new();
    w.set_alignment(64).unwrap();
    w.add_f32("t", &[1], &[1.0]).unwrap();
    let path = dir.path("a.gguf");
    w.write(&path).unwrap();
    let mut b = std::fs::read(&path).unwrap();
    let at = b
        .windows(17)
        .position(|w| w == b"general.alignment")
        .unwrap()
        + 17
        + 4;
    put_u32(&mut b, at, 48);
    assert_err(
        &dir,
        &b,
        &["'general.alignment' must be a u32 power of two"],
    );
    put_u32(&mut b, at - 4, 10); // now a u64 of which only 4 bytes are left before the infos
    open_err(&dir, &b);
}

#[test]
fn random_bit_flips_never_panic() {
    let dir = TempDir::new("flips");
    let s = sample(&dir);
    let path = dir.path("flipped.gguf");
    let mut opened = 0;
    for byte in 0..s.data_offset {
        for bit in 0..8 {
            let mut b = s.bytes.clone();
            b[byte] ^= 1 << bit;
            std::fs::write(&path, &b).unwrap();
            match GgufFile::open(&path) {
                Ok(f) => {
                    opened += 1;
                    for t in f.tensors() {
                        let _ = f.dequantize(t.name());
                    }
                }
                Err(e) => assert!(e.to_string().contains("flipped.gguf"), "{e}"),
            }
        }
    }
    // Flips in string contents or padding leave a valid file; most flips do not.
    assert!(opened > 0 && opened < s.data_offset * 8);
}

#[test]
fn missing_tensors_are_errors() {
    let dir = TempDir::new("missing");
    let mut w = GgufWriter::new();
    w.add_raw("iq2", GgmlType::IQ2_XXS, &[256], vec![0u8; 66])
        .unwrap();
    let path = dir.path("iq.gguf");
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_bytes("iq2").unwrap().len(), 66);
    // Every i-quant dequantizes now: an all-zero IQ2_XXS block is 256 zeros.
    assert_eq!(f.dequantize("iq2").unwrap(), vec![0.0; 256]);
    assert!(f.tensor("iq2", &device()).is_ok());
    let err = f.tensor_bytes("nope").unwrap_err().to_string();
    assert!(
        err.contains("no tensor named 'nope'") && err.contains("iq.gguf"),
        "{err}"
    );
    let err = f.architecture().unwrap_err().to_string();
    assert!(err.contains("'general.architecture' is missing"), "{err}");
    let err = GgufFile::open(dir.path("absent.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("absent.gguf") && err.contains("cannot open"),
        "{err}"
    );
}

#[test]
fn every_ggml_type_is_named() {
    assert_eq!(GgmlType::ALL.len(), 34);
    for ty in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        assert!(ty.type_size() > 0 && ty.block_size() > 0);
    }
    assert_eq!(GgmlType::from_id(30), Some(GgmlType::BF16));
    assert_eq!(GgmlType::from_id(39), Some(GgmlType::MXFP4));
    assert_eq!(GgmlType::TQ1_0.type_size(), 54);
    assert_eq!(GgufValueType::from_id(12), Some(GgufValueType::F64));
    assert_eq!(GgufValueType::from_id(13), None);
}

// ---- the real model -------------------------------------------------------------------------

fn find_smollm2() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TENSOR_ENGINE_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p));
    }
    // Where scripts/fetch-models.sh caches models.
    let cache = match std::env::var_os("TENSOR_ENGINE_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/tensor-engine"),
    };
    let root = cache.join("models");
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let p = entry.path();
            let name = p.file_name()?.to_string_lossy().to_lowercase();
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".gguf") && name.contains("smollm2") {
                return Some(p);
            }
        }
    }
    None
}

#[test]
fn smollm2_gguf_when_present() {
    let Some(path) = find_smollm2() else {
        eprintln!(
            "skipped: no SmolLM2 GGUF (run scripts/fetch-models.sh smollm2 or set \
             TENSOR_ENGINE_SMOLLM2_GGUF)"
        );
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    let emb = f.tensor_info("token_embd.weight").unwrap();
    assert_eq!(emb.dims(), [49152, 576]);
    let mut values = 0usize;
    for t in f.tensors() {
        let v = f.dequantize(t.name()).unwrap();
        assert_eq!(v.len(), t.elem_count());
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{} has non-finite values",
            t.name()
        );
        values += v.len();
    }
    let norm = f.tensor("output_norm.weight", &device()).unwrap();
    assert_eq!((norm.dtype(), norm.dims()), (DType::F32, &[576usize][..]));
    eprintln!(
        "{}: {} tensors, {values} values, all finite",
        path.display(),
        f.tensors().len()
    );
}
