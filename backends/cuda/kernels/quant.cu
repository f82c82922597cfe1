// quant kernels (to be written).
