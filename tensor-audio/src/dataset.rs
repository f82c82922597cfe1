//! A folder of WAV clips as a training set (the shape of torchaudio's folder datasets plus a
//! DataLoader): every clip decoded, mixed to mono and resampled once at open, transcripts from
//! `metadata.tsv`, and seeded epochs of random fixed-length crops batched as `[B, 1, T]`.

use std::collections::HashMap;
use std::path::Path;

use tensor_core::{Device, Error, Result, Tensor};
use tensor_io::resample::{resample, ResampleQuality};
use tensor_io::wav::read_wav;

/// The transcript file `scripts/fetch_speech.sh` writes: `file<TAB>voice<TAB>text` per line.
pub const METADATA_FILE: &str = "metadata.tsv";

/// One clip: mono samples at the folder's rate, and its transcript line when there is one.
#[derive(Clone, Debug, PartialEq)]
pub struct Clip {
    /// File name within the folder, e.g. `s0001_en-us.wav`.
    pub name: String,
    pub samples: Vec<f32>,
    pub text: Option<String>,
    pub voice: Option<String>,
}

#[derive(Clone, Debug)]
pub struct AudioFolder {
    clips: Vec<Clip>,
    sample_rate: u32,
}

fn folder_err(dir: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Msg(format!("audio folder '{}': {msg}", dir.display()))
}

/// Parse `metadata.tsv`: one `file<TAB>voice<TAB>text` line per clip; blank lines and a first
/// line that is the column header are skipped.
fn read_metadata(dir: &Path, path: &Path) -> Result<HashMap<String, (String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        context: format!("audio folder: cannot read '{}'", path.display()),
        source: e,
    })?;
    let mut rows = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || (i == 0 && line == "file\tvoice\ttext") {
            continue;
        }
        let bad = |what: &str| {
            folder_err(
                dir,
                format!(
                    "{METADATA_FILE}:{}: {what} (expected file<TAB>voice<TAB>text), got {line:?}",
                    i + 1
                ),
            )
        };
        let mut parts = line.splitn(3, '\t');
        let (Some(file), Some(voice), Some(text)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("fewer than 3 tab-separated fields"));
        };
        if file.is_empty() || file.contains('/') || file.contains('\\') {
            return Err(bad("the file field must be a bare file name"));
        }
        if text.contains('\t') {
            return Err(bad("more than 3 tab-separated fields"));
        }
        if rows
            .insert(file.to_string(), (voice.to_string(), text.to_string()))
            .is_some()
        {
            return Err(bad("the file is listed twice"));
        }
    }
    Ok(rows)
}

impl AudioFolder {
    /// Load every `*.wav` directly in `dir` (sorted by name), mixed to mono and resampled to
    /// `sample_rate`. Transcripts come from `dir/metadata.tsv` when it exists; a line naming a
    /// file that is not in the folder is an error (a stale or mismatched metadata file).
    pub fn open(
        dir: impl AsRef<Path>,
        sample_rate: u32,
        quality: ResampleQuality,
    ) -> Result<AudioFolder> {
        let dir = dir.as_ref();
        if sample_rate == 0 {
            return Err(folder_err(dir, "the target sample rate must be positive"));
        }
        let entries = std::fs::read_dir(dir).map_err(|e| Error::Io {
            context: format!("audio folder: cannot list '{}'", dir.display()),
            source: e,
        })?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::Io {
                context: format!("audio folder: cannot list '{}'", dir.display()),
                source: e,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_wav = Path::new(&name)
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("wav"));
            // Dot files include the atomic writers' temporaries.
            if is_wav && !name.starts_with('.') && entry.path().is_file() {
                names.push(name);
            }
        }
        names.sort();
        if names.is_empty() {
            return Err(folder_err(
                dir,
                "no .wav files (run scripts/fetch_speech.sh to build the speech corpus)",
            ));
        }
        let meta_path = dir.join(METADATA_FILE);
        let mut meta = if meta_path.is_file() {
            read_metadata(dir, &meta_path)?
        } else {
            HashMap::new()
        };
        let mut clips = Vec::with_capacity(names.len());
        for name in names {
            let audio = read_wav(dir.join(&name))?;
            let mono = resample(&audio.to_mono(), sample_rate, quality)?;
            let (voice, text) = match meta.remove(&name) {
                Some((v, t)) => (Some(v), Some(t)),
                None => (None, None),
            };
            clips.push(Clip {
                name,
                samples: mono.samples,
                text,
                voice,
            });
        }
        if let Some(stray) = meta.keys().min() {
            return Err(folder_err(
                dir,
                format!(
                    "{METADATA_FILE} lists {stray:?} (and {} more) that is not a .wav file here",
                    meta.len() - 1
                ),
            ));
        }
        Ok(AudioFolder { clips, sample_rate })
    }

    pub fn len(&self) -> usize {
        self.clips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clips.is_empty()
    }

    pub fn clips(&self) -> &[Clip] {
        &self.clips
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Total length of all clips in seconds.
    pub fn duration_secs(&self) -> f64 {
        self.clips.iter().map(|c| c.samples.len()).sum::<usize>() as f64 / self.sample_rate as f64
    }
}

/// splitmix64: a tiny seeded generator, the same stream on every machine.
#[derive(Clone, Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is below 2^-40 for the sizes used here.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Seeded epochs of random crops over an [`AudioFolder`] (torch.utils.data.DataLoader with
/// `shuffle=True, drop_last=True` over random-crop samples). Epoch `k` of seed `s` is the same
/// on every run, whatever was drawn before, so a resumed training run can [`set_epoch`] and
/// continue with exactly the batches it would have seen.
///
/// [`set_epoch`]: AudioLoader::set_epoch
#[derive(Clone, Debug)]
pub struct AudioLoader<'a> {
    folder: &'a AudioFolder,
    batch_size: usize,
    crop_len: usize,
    seed: u64,
    epoch: u64,
}

impl<'a> AudioLoader<'a> {
    /// `batch_size` clips per batch, each cropped (or zero-padded at the end) to `crop_len`
    /// samples. The folder must hold at least one full batch.
    pub fn new(
        folder: &'a AudioFolder,
        batch_size: usize,
        crop_len: usize,
        seed: u64,
    ) -> Result<AudioLoader<'a>> {
        if batch_size == 0 || crop_len == 0 {
            return Err(Error::invalid(
                "AudioLoader::new",
                format!("batch_size ({batch_size}) and crop_len ({crop_len}) must be positive"),
            ));
        }
        if batch_size > folder.len() {
            return Err(Error::invalid(
                "AudioLoader::new",
                format!(
                    "batch_size {batch_size} exceeds the {} clips of the folder (the last partial batch is dropped, so no batch would be made)",
                    folder.len()
                ),
            ));
        }
        Ok(AudioLoader {
            folder,
            batch_size,
            crop_len,
            seed,
            epoch: 0,
        })
    }

    /// Full batches per epoch (the last partial batch is dropped).
    pub fn batches_per_epoch(&self) -> usize {
        self.folder.len() / self.batch_size
    }

    /// The epoch the next [`epoch`](AudioLoader::epoch) call yields.
    pub fn current_epoch(&self) -> u64 {
        self.epoch
    }

    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// The next epoch: batches of f32 `[batch_size, 1, crop_len]` on `device`, clips in a
    /// seeded random order, each at a random offset.
    pub fn epoch(&mut self, device: &Device) -> AudioEpoch<'a> {
        let epoch = self.epoch;
        self.epoch += 1;
        let mut rng = SplitMix(
            self.seed
                .wrapping_mul(0x2545_f491_4f6c_dd1d)
                .wrapping_add(epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                ^ 0x5851_f42d_4c95_7f2d,
        );
        let n = self.folder.len();
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
        AudioEpoch {
            folder: self.folder,
            order,
            next: 0,
            batch_size: self.batch_size,
            crop_len: self.crop_len,
            rng,
            device: device.clone(),
        }
    }
}

/// One epoch's batches; see [`AudioLoader::epoch`].
pub struct AudioEpoch<'a> {
    folder: &'a AudioFolder,
    order: Vec<usize>,
    next: usize,
    batch_size: usize,
    crop_len: usize,
    rng: SplitMix,
    device: Device,
}

impl AudioEpoch<'_> {
    /// Clip indices (into [`AudioFolder::clips`]) of the batches still to come, in order.
    pub fn remaining_clips(&self) -> Vec<&[usize]> {
        self.order[self.next..]
            .chunks_exact(self.batch_size)
            .collect()
    }
}

impl Iterator for AudioEpoch<'_> {
    type Item = Result<Tensor>;

    fn next(&mut self) -> Option<Result<Tensor>> {
        let end = self.next + self.batch_size;
        if end > self.order.len() {
            return None;
        }
        let (b, t) = (self.batch_size, self.crop_len);
        let mut data = vec![0f32; b * t];
        for (row, &ci) in self.order[self.next..end].iter().enumerate() {
            let s = &self.folder.clips[ci].samples;
            let start = if s.len() > t {
                self.rng.below(s.len() - t + 1)
            } else {
                0
            };
            let take = t.min(s.len());
            data[row * t..row * t + take].copy_from_slice(&s[start..start + take]);
        }
        self.next = end;
        Some(Tensor::from_vec(data, (b, 1, t), &self.device))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.order.len() - self.next) / self.batch_size;
        (n, Some(n))
    }
}

impl ExactSizeIterator for AudioEpoch<'_> {}
