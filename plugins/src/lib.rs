//! CUDA kernels and TensorRT plugins for referdino custom ops.
