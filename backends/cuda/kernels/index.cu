// index kernels (to be written).
