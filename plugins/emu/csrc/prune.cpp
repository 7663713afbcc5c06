// The CUDA source compiled as C++ for the CPU emulation (cuda_emu.h is force-included).
#include "../../kernels/prune.cu"
