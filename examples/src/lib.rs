//! Shared helpers of the example programs (plots, progress bars); the programs themselves
//! live beside this crate as `examples/*.rs`: run them with
//! `cargo run --release -p tensor-examples --example <name>`.

pub mod codec_eval;
pub mod curves;
pub mod plot;

/// The device a `--device` flag names: `cpu`, `cuda` (the first GPU) or `cuda:N`. Asking for
/// CUDA on a machine without a driver or GPU is an error that says so.
pub fn device_from_name(name: &str) -> Result<tensor_core::Device, String> {
    match name {
        "cpu" => Ok(tensor_cpu::device()),
        "cuda" => tensor_cuda::device(0).map_err(|e| format!("--device cuda: {e}")),
        _ => match name.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => tensor_cuda::device(i).map_err(|e| format!("--device {name}: {e}")),
            _ => Err(format!(
                "--device: unknown device {name:?} (expected cpu, cuda or cuda:N)"
            )),
        },
    }
}

/// The checkpoint a `--checkpoint`-style flag names: `p` itself, or `p/file` when `p` is a
/// folder. A missing file is an error that names it (`no {what} checkpoint at …`) and ends
/// with `hint`.
pub fn checkpoint_in(
    p: &std::path::Path,
    file: &str,
    what: &str,
    hint: &str,
) -> Result<std::path::PathBuf, String> {
    let f = if p.is_dir() {
        p.join(file)
    } else {
        p.to_path_buf()
    };
    if !f.is_file() {
        return Err(format!("no {what} checkpoint at {} ({hint})", f.display()));
    }
    Ok(f)
}

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

/// The peak resident set size of this process in MiB (`VmHWM`), if the system reports it.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
}

/// Generation statistics on stderr: one human line, and with `json` one JSON line with
/// `prompt_tokens`, `generated_tokens`, `ttft_ms`, `prefill_tok_s`, `decode_tok_s`,
/// `peak_rss_mb` (scripts parse it; keep the keys).
pub fn report_stats(s: &tensor_models::generation::GenerationStats, json: bool) {
    let ttft_ms = s.time_to_first_token.as_secs_f64() * 1e3;
    let rss = peak_rss_mb();
    eprintln!(
        "[prompt tokens: {}, generated tokens: {}, time to first token: {ttft_ms:.0} ms, \
         prefill: {:.1} tok/s, decode: {:.1} tok/s{}]",
        s.prompt_tokens,
        s.generated_tokens,
        s.prefill_tokens_per_s,
        s.decode_tokens_per_s,
        rss.map(|r| format!(", peak RSS: {r:.0} MB"))
            .unwrap_or_default()
    );
    if json {
        eprintln!(
            "{{\"prompt_tokens\":{},\"generated_tokens\":{},\"ttft_ms\":{},\
             \"prefill_tok_s\":{},\"decode_tok_s\":{},\"peak_rss_mb\":{}}}",
            s.prompt_tokens,
            s.generated_tokens,
            json_num(ttft_ms),
            json_num(s.prefill_tokens_per_s),
            json_num(s.decode_tokens_per_s),
            rss.map_or_else(|| "null".into(), json_num),
        );
    }
}

/// The `main` of a command-line example: parse the arguments (`Ok(None)` prints `usage`;
/// an error prints it with the message and exits 2), size rayon's pool to `threads`, run,
/// and turn an error or a panic into a message prefixed with `name` and exit code 1.
pub fn cli_main<A>(
    name: &str,
    usage: &str,
    parsed: Result<Option<A>, String>,
    threads: impl Fn(&A) -> Option<usize>,
    run: impl FnOnce(A) -> Result<(), String> + std::panic::UnwindSafe,
) -> std::process::ExitCode
where
    A: std::panic::UnwindSafe,
{
    use std::process::ExitCode;
    let args = match parsed {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{usage}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("{name}: {msg}\n\n{usage}");
            return ExitCode::from(2);
        }
    };
    if let Some(n) = threads(&args) {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("{name}: cannot start {n} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    match std::panic::catch_unwind(move || run(args)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(msg)) => {
            eprintln!("{name}: {msg}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{name}: internal error (panic)");
            ExitCode::FAILURE
        }
    }
}
