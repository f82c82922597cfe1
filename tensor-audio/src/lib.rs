//! Audio: spectrograms, neural audio codec, vocoders. Filled by the audio issue; nothing here yet.
