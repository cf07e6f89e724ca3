// TEMPORARY placeholder until the CUDA kernels land (helper in progress).
