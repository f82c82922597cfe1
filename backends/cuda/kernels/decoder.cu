// decoder kernels (to be written).
