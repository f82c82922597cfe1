// random kernels (to be written).
