//! Shared helpers of the example programs (plots, progress bars); the programs themselves
//! live beside this crate as `examples/*.rs`: run them with
//! `cargo run --release -p tensor-examples --example <name>`.

pub mod plot;

/// A progress bar for `total` steps in the examples' common style (hidden when stderr is
/// not a terminal, so logs stay clean).
pub fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("static template is valid"),
    );
    pb
}
