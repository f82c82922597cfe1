//! WebGPU backend. Not implemented yet; this crate exposes nothing, so no caller can mistake it
//! for a working device.
