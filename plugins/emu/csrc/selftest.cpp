// Kernels that break CUDA's rules on purpose, written as kernel sources are (cuda_emu.h is
// force-included): the emulation must report each instead of passing or hanging.

// Lanes 16..31 return, then the others shuffle with the full mask: undefined on a GPU.
extern "C" __global__ void rde_selftest_shuffle_after_exit(float* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Odd lanes shuffle once more than even ones: lanes at different shuffles.
extern "C" __global__ void rde_selftest_diverged_shuffles(float* out) {
    float v = (float)threadIdx.x;
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    if (threadIdx.x & 1) v += __shfl_xor_sync(0xffffffffu, v, 2);
    out[threadIdx.x] = v;
}

// Thread 0 waits at a barrier the others never reach.
extern "C" __global__ void rde_selftest_lonely_barrier(float* out) {
    if (threadIdx.x == 0) {
        __syncthreads();
    } else {
        out[threadIdx.x] = 1.0f;
        float v = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
        out[threadIdx.x] = v;
    }
}

// A correct warp sum, as the kernels reduce: every lane gets 0 + 1 + ... + 31 = 496.
extern "C" __global__ void rde_selftest_warp_sum(float* out) {
    float v = (float)(threadIdx.x & 31);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

// Each thread writes its slot of shared memory and reads the other warp's: without a barrier between
// them the value read depends on which warp ran first (a race on a GPU), so it changes with the
// schedule. `synced` puts the barrier in: every schedule gives block * 64 + (thread ^ 32).
static void exchange_halves(float* out, bool synced) {
    __shared__ float s[64];
    const unsigned t = threadIdx.x;
    s[t] = (float)(blockIdx.x * 64 + t);
    if (synced) __syncthreads();
    out[blockIdx.x * 64 + t] = s[t ^ 32u];
}

extern "C" __global__ void rde_selftest_unsynced_shared(float* out) { exchange_halves(out, false); }

extern "C" __global__ void rde_selftest_synced_shared(float* out) { exchange_halves(out, true); }
