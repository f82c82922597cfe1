//! The backend conformance suite (tensor_core::conformance) on the CPU device, one test per
//! group. `CONFORMANCE_FILTER=<substring of a case name>` runs single cases.

fn run(group: &str) {
    if let Err(e) = tensor_core::conformance::run_group(&tensor_cpu::device(), group) {
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
