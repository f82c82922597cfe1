// fused kernels (to be written).
