//! The held-out evaluation shared by `train_codec` and `codec eval`: every held-out clip is
//! encoded and decoded at each bitrate up to 6 kbps, and scored by SI-SNR and log-mel
//! distance next to µ-law baselines (downsampled to reach low bitrates), as a Markdown table.

use std::path::Path;

use tensor_audio::codec::Codec;
use tensor_audio::dataset::AudioFolder;
use tensor_audio::metrics::{mu_law_baseline, si_snr, LogMelDistance};
use tensor_core::{no_grad, Device, Tensor};
use tensor_io::resample::{resample, ResampleQuality};
use tensor_io::wav::Audio;

/// One row of the table: mean SI-SNR (dB) and mean log-mel distance over the clips.
pub struct EvalRow {
    pub system: String,
    pub kbps: f64,
    pub si_snr_db: f64,
    pub log_mel: f64,
}

/// Quantizer counts evaluated: 1, 2, 4, 8, 12 (capped by the model and by 6 kbps).
pub fn eval_n_qs(codec: &Codec) -> Vec<usize> {
    [1usize, 2, 4, 8, 12]
        .into_iter()
        .filter(|&q| q <= codec.num_quantizers() && codec.bitrate_kbps(q) <= 6.0 + 1e-9)
        .collect()
}

/// µ-law baselines: (rate Hz, bits); bitrate = rate · bits.
pub const BASELINES: [(u32, u32); 5] = [(16000, 8), (8000, 8), (4000, 8), (2000, 4), (2000, 3)];

fn resampler(x: &[f32], from: u32, to: u32) -> tensor_core::Result<Vec<f32>> {
    let a = Audio {
        sample_rate: from,
        channels: 1,
        samples: x.to_vec(),
    };
    Ok(resample(&a, to, ResampleQuality::High)?.samples)
}

/// Evaluate the codec (and the baselines) on the clips of `dir` (at most `max_clips`, in
/// name order). Returns the rows and the number of clips and seconds scored.
pub fn evaluate(
    codec: &Codec,
    dir: &Path,
    max_clips: Option<usize>,
    device: &Device,
) -> Result<(Vec<EvalRow>, usize, f64), String> {
    let e = |e: tensor_core::Error| e.to_string();
    let sr = codec.sample_rate();
    let folder = AudioFolder::open(dir, sr, ResampleQuality::High)
        .map_err(|err| format!("cannot load {}: {err}", dir.display()))?;
    let clips: Vec<_> = folder
        .clips()
        .iter()
        .take(max_clips.unwrap_or(usize::MAX))
        .collect();
    if clips.is_empty() {
        return Err(format!("{} holds no clips to evaluate", dir.display()));
    }
    let lm = LogMelDistance::new(sr, device).map_err(e)?;
    let n_qs = eval_n_qs(codec);
    let mut sums = vec![(0.0f64, 0.0f64); n_qs.len() + BASELINES.len()];
    let mut seconds = 0.0;
    let _g = no_grad();
    for clip in &clips {
        let x = &clip.samples;
        seconds += x.len() as f64 / sr as f64;
        let wav = Tensor::from_vec(x.clone(), (1, 1, x.len()), device).map_err(e)?;
        let z = codec
            .encode(&wav, *n_qs.last().expect("at least one n_q"))
            .map_err(e)?;
        for (i, &q) in n_qs.iter().enumerate() {
            let codes = z.narrow(1, 0, q).map_err(e)?;
            let y = codec
                .decode_len(&codes, x.len())
                .map_err(e)?
                .flatten_all()
                .map_err(e)?
                .to_vec::<f32>()
                .map_err(e)?;
            sums[i].0 += si_snr(x, &y).map_err(e)?;
            sums[i].1 += lm.distance(x, &y).map_err(e)?;
        }
        for (j, &(rate, bits)) in BASELINES.iter().enumerate() {
            let (y, _) = mu_law_baseline(x, sr, rate, bits, &resampler).map_err(e)?;
            let k = n_qs.len() + j;
            sums[k].0 += si_snr(x, &y).map_err(e)?;
            sums[k].1 += lm.distance(x, &y).map_err(e)?;
        }
    }
    let n = clips.len() as f64;
    let mut rows = Vec::new();
    for (i, &q) in n_qs.iter().enumerate() {
        rows.push(EvalRow {
            system: format!("codec, n_q = {q}"),
            kbps: codec.bitrate_kbps(q),
            si_snr_db: sums[i].0 / n,
            log_mel: sums[i].1 / n,
        });
    }
    for (j, &(rate, bits)) in BASELINES.iter().enumerate() {
        let k = n_qs.len() + j;
        rows.push(EvalRow {
            system: format!("µ-law {bits}-bit at {} kHz", rate as f64 / 1000.0),
            kbps: rate as f64 * bits as f64 / 1000.0,
            si_snr_db: sums[k].0 / n,
            log_mel: sums[k].1 / n,
        });
    }
    Ok((rows, clips.len(), seconds))
}

/// The rows as a Markdown table.
pub fn format_table(rows: &[EvalRow]) -> String {
    let mut s = String::from(
        "| system | kbit/s | SI-SNR (dB) ↑ | log-mel distance ↓ |\n|---|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.1} | {:.2} | {:.3} |\n",
            r.system, r.kbps, r.si_snr_db, r.log_mel
        ));
    }
    s
}
