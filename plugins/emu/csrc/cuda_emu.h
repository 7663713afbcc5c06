// CUDA C++ as plain C++ for the CPU: just enough of the language and its built-ins for the kernels in
// plugins/kernels/ to compile with g++ and run under runtime.cpp, where every thread of a block is a
// fiber on one OS thread. Force-included (`-include cuda_emu.h`) before each kernel source.
//
// What this checks and what it does not: index arithmetic, launch geometry, reductions, the order of
// barriers and warp shuffles, shared-memory use (dynamic shared memory is filled with garbage before each
// block, so a read before a write shows). Not the GPU's float rounding of expf & co, its memory model,
// or anything about speed. See plugins/README.md.
#pragma once

#include <math.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

struct rde_dim3 {
    unsigned int x, y, z;
};

struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned int x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// One fiber runs at a time, so plain globals are each thread's own while it runs (runtime.cpp sets them
// before resuming a fiber).
extern rde_dim3 threadIdx;
extern rde_dim3 blockIdx;
extern rde_dim3 blockDim;
extern rde_dim3 gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)
// Block-scope `static`: one copy shared by every fiber. Blocks run one after another, as do launches
// (runtime.cpp holds a lock), so one copy per program is one copy per block.
#define __shared__ static
// Dynamic shared memory: the launch's buffer (`extern __shared__ T name[]` on the GPU, see kernels).
#define RD_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(rde_dynamic_shared())

void* rde_dynamic_shared();
void __syncthreads();
// Every lane of the calling warp hands in `v` and gets lane `src`'s value back.
std::uint64_t rde_warp_exchange(std::uint64_t v, int src);

template <typename T>
inline T __shfl_xor_sync(unsigned int /*mask*/, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = rde_warp_exchange(bits, (int)((threadIdx.x & 31u) ^ (unsigned)lane_mask));
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}

template <typename T>
inline T __shfl_sync(unsigned int /*mask*/, T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = rde_warp_exchange(bits, src_lane & 31);
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}

template <typename T>
inline T __ldg(const T* p) {
    return *p;
}

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int i;
    std::memcpy(&i, &f, 4);
    return i;
}
// Without FMA contraction (the build passes -ffp-contract=off) a + b and a * b round once, as these do.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }

using std::max;
using std::min;
