//! The backend conformance suite (tensor_core::conformance) on the first CUDA device, one test
//! per group; each skips (passes with a note) on a machine without CUDA.
//! `CONFORMANCE_FILTER=<substring of a case name>` runs single cases.

fn run(group: &str) {
    let dev = match tensor_cuda::device(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped ({group}): {e}");
            return;
        }
    };
    if let Err(e) = tensor_core::conformance::run_group(&dev, group) {
        panic!("{e}");
    }
}

#[test]
fn conformance_forward() {
    run("forward");
}

#[test]
fn conformance_grad() {
    run("grad");
}

#[test]
fn conformance_parity() {
    run("parity");
}

#[test]
fn conformance_errors() {
    run("errors");
}
