//! CUDA backend. Implemented by the CUDA issue; until then this crate exposes nothing, so no
//! caller can mistake it for a working device.
