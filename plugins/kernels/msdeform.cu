// Multi-scale deformable attention, forward only (ONNX op `referdino::MSDeformAttn`).
//
// value              [B, S, H, Dh]      T (float or __half)
// spatial_shapes     [L, 2]             I (long long or int), (h, w) per level
// level_start_index  [L]                I, first row of each level in S
// sampling_locations [B, Q, H, L, P, 2] float, (x, y) in [0, 1]
// attention_weights  [B, Q, H, L, P]    float
// out                [B, Q, H * Dh]     T
//
// Bilinear sampling with align_corners=False (pixel = loc * size - 0.5) and zero padding: a corner outside
// the map contributes nothing. Accumulation is always in float.
//
// Two kernels:
// * `msda_fwd_*`: one block per (b, q). The block first turns every (head, level, point) of that query into
//   four corner row offsets and four weights (bilinear weight x attention weight) in shared memory, reading
//   locations and weights once and coalesced; then each thread owns VEC consecutive output channels (h, c..)
//   (VEC = 4, 2 or 1: the widest that divides Dh and the buffers' alignment allow, chosen by the launcher;
//   one 16/8-byte load per corner instead of four, each channel summed in the same order) and gathers the
//   corners. Consecutive threads read consecutive channels of the same value row: coalesced, no atomics.
// * `msda_naive_*`: one thread per output element, recomputing the bilinear weights per channel. Kept as the
//   straightforward baseline for timing and as an independent second implementation in tests.
#include <cuda_fp16.h>

// Dynamic shared memory; plugins/emu (the CPU emulation of these kernels) defines its own.
#ifndef RD_DYNAMIC_SHARED
#define RD_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]
#endif

namespace rd {

__device__ __forceinline__ float load_f32(const float* p) { return *p; }
__device__ __forceinline__ float load_f32(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void store_f32(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f32(__half* p, float v) { *p = __float2half_rn(v); }

// VEC consecutive channels as floats, in one load of VEC * sizeof(T) bytes (the launcher checks that the
// addresses are aligned to it).
template <int VEC>
__device__ __forceinline__ void load_vec(const float* p, float (&v)[VEC]) {
    if constexpr (VEC == 4) {
        const float4 q = *reinterpret_cast<const float4*>(p);
        v[0] = q.x;
        v[1] = q.y;
        v[2] = q.z;
        v[3] = q.w;
    } else if constexpr (VEC == 2) {
        const float2 q = *reinterpret_cast<const float2*>(p);
        v[0] = q.x;
        v[1] = q.y;
    } else {
        v[0] = *p;
    }
}
template <int VEC>
__device__ __forceinline__ void load_vec(const __half* p, float (&v)[VEC]) {
    if constexpr (VEC == 4) {
        const uint2 q = *reinterpret_cast<const uint2*>(p);
        const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&q.x));
        const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&q.y));
        v[0] = a.x;
        v[1] = a.y;
        v[2] = b.x;
        v[3] = b.y;
    } else if constexpr (VEC == 2) {
        const float2 a = __half22float2(*reinterpret_cast<const __half2*>(p));
        v[0] = a.x;
        v[1] = a.y;
    } else {
        v[0] = __half2float(*p);
    }
}
template <int VEC>
__device__ __forceinline__ void store_vec(float* p, const float (&v)[VEC]) {
    if constexpr (VEC == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    } else if constexpr (VEC == 2) {
        *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
    } else {
        *p = v[0];
    }
}
template <int VEC>
__device__ __forceinline__ void store_vec(__half* p, const float (&v)[VEC]) {
    if constexpr (VEC == 4) {
        uint2 q;
        *reinterpret_cast<__half2*>(&q.x) = __floats2half2_rn(v[0], v[1]);
        *reinterpret_cast<__half2*>(&q.y) = __floats2half2_rn(v[2], v[3]);
        *reinterpret_cast<uint2*>(p) = q;
    } else if constexpr (VEC == 2) {
        *reinterpret_cast<__half2*>(p) = __floats2half2_rn(v[0], v[1]);
    } else {
        *p = __float2half_rn(v[0]);
    }
}

// One sampling point, resolved: row offsets (in elements, relative to the batch's value base, already
// including head and channel 0) of the four bilinear corners, -1 where the corner lies outside the map.
// 16-byte aligned so that a thread reads it with two 128-bit shared loads: with several heads in one warp
// (vectorized channels, below) each quarter-warp then reads one address, a broadcast without bank conflicts.
struct __align__(16) Tap {
    int off[4];
    float w[4];
};

// Resolves one sampling point into its four corners. `x`,`y` are normalised locations.
__device__ __forceinline__ void resolve_tap(float lx, float ly, float aw, int h_l, int w_l, int start, int head,
                                            int heads, int head_dim, Tap& t) {
    const float x = lx * (float)w_l - 0.5f;
    const float y = ly * (float)h_l - 0.5f;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        t.off[k] = -1;
        t.w[k] = 0.0f;
    }
    // Also rejects NaN/inf locations: every comparison with NaN is false.
    if (!(x > -1.0f && y > -1.0f && x < (float)w_l && y < (float)h_l)) {
        return;
    }
    const float x0f = floorf(x);
    const float y0f = floorf(y);
    const int x0 = (int)x0f;
    const int y0 = (int)y0f;
    const float fx = x - x0f;
    const float fy = y - y0f;
    const float gx = 1.0f - fx;
    const float gy = 1.0f - fy;
    const int xs[4] = {x0, x0 + 1, x0, x0 + 1};
    const int ys[4] = {y0, y0, y0 + 1, y0 + 1};
    const float ws[4] = {gy * gx, gy * fx, fy * gx, fy * fx};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        if (xs[k] >= 0 && xs[k] < w_l && ys[k] >= 0 && ys[k] < h_l) {
            const int row = start + ys[k] * w_l + xs[k];
            t.off[k] = (row * heads + head) * head_dim;
            t.w[k] = ws[k] * aw;
        }
    }
}

template <typename T, typename I, int VEC>
__device__ void msda_fwd(const T* __restrict__ value, const I* __restrict__ spatial_shapes,
                         const I* __restrict__ level_start, const float* __restrict__ loc,
                         const float* __restrict__ attn, T* __restrict__ out, int num_value, int heads,
                         int head_dim, int num_query, int levels, int points) {
    RD_DYNAMIC_SHARED(unsigned char, smem_raw);
    Tap* taps = reinterpret_cast<Tap*>(smem_raw);

    const int bq = blockIdx.x;  // b * num_query + q
    const int b = bq / num_query;
    const int lp = levels * points;
    const int hlp = heads * lp;

    // Phase 1: resolve all (head, level, point) taps of this query. Layout [H, L, P] matches the inputs.
    const float* loc_q = loc + (size_t)bq * hlp * 2;
    const float* attn_q = attn + (size_t)bq * hlp;
    for (int p = threadIdx.x; p < hlp; p += blockDim.x) {
        const int head = p / lp;
        const int level = (p / points) % levels;
        const int h_l = (int)spatial_shapes[2 * level];
        const int w_l = (int)spatial_shapes[2 * level + 1];
        const int start = (int)level_start[level];
        const float2 xy = reinterpret_cast<const float2*>(loc_q)[p];
        resolve_tap(xy.x, xy.y, attn_q[p], h_l, w_l, start, head, heads, head_dim, taps[p]);
    }
    __syncthreads();

    // Phase 2: every thread owns VEC consecutive channels h * Dh + c .. + VEC - 1 of this query's output
    // (Dh % VEC == 0), each summed in the same order as with VEC = 1.
    const T* value_b = value + (size_t)b * num_value * heads * head_dim;
    T* out_q = out + (size_t)bq * heads * head_dim;
    const int per_head = head_dim / VEC;
    const int slots = heads * per_head;
    for (int o = threadIdx.x; o < slots; o += blockDim.x) {
        const int head = o / per_head;
        const int c = (o - head * per_head) * VEC;
        const Tap* th = taps + head * lp;
        float acc[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[e] = 0.0f;
        for (int k = 0; k < lp; ++k) {
            const Tap& t = th[k];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (t.off[j] >= 0) {
                    float v[VEC];
                    load_vec<VEC>(value_b + t.off[j] + c, v);
#pragma unroll
                    for (int e = 0; e < VEC; ++e) acc[e] += t.w[j] * v[e];
                }
            }
        }
        store_vec<VEC>(out_q + head * head_dim + c, acc);
    }
}

// The launcher's vector width (1, 2 or 4 channels per thread; its launch geometry depends on it).
template <typename T, typename I>
__device__ void msda_fwd_vec(const T* value, const I* spatial_shapes, const I* level_start, const float* loc,
                             const float* attn, T* out, int num_value, int heads, int head_dim, int num_query,
                             int levels, int points, int vec) {
    if (vec == 4) {
        msda_fwd<T, I, 4>(value, spatial_shapes, level_start, loc, attn, out, num_value, heads, head_dim,
                          num_query, levels, points);
    } else if (vec == 2) {
        msda_fwd<T, I, 2>(value, spatial_shapes, level_start, loc, attn, out, num_value, heads, head_dim,
                          num_query, levels, points);
    } else {
        msda_fwd<T, I, 1>(value, spatial_shapes, level_start, loc, attn, out, num_value, heads, head_dim,
                          num_query, levels, points);
    }
}

template <typename T, typename I>
__device__ void msda_naive(const T* __restrict__ value, const I* __restrict__ spatial_shapes,
                           const I* __restrict__ level_start, const float* __restrict__ loc,
                           const float* __restrict__ attn, T* __restrict__ out, int batch, int num_value,
                           int heads, int head_dim, int num_query, int levels, int points) {
    const long long total = (long long)batch * num_query * heads * head_dim;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) {
        return;
    }
    const int c = (int)(idx % head_dim);
    const int head = (int)((idx / head_dim) % heads);
    const long long bq = idx / ((long long)head_dim * heads);
    const int b = (int)(bq / num_query);
    const T* value_b = value + (size_t)b * num_value * heads * head_dim;
    float acc = 0.0f;
    for (int level = 0; level < levels; ++level) {
        const int h_l = (int)spatial_shapes[2 * level];
        const int w_l = (int)spatial_shapes[2 * level + 1];
        const int start = (int)level_start[level];
        for (int p = 0; p < points; ++p) {
            const long long pi = ((bq * heads + head) * levels + level) * points + p;
            Tap t;
            resolve_tap(loc[2 * pi], loc[2 * pi + 1], attn[pi], h_l, w_l, start, head, heads, head_dim, t);
            for (int j = 0; j < 4; ++j) {
                if (t.off[j] >= 0) {
                    acc += t.w[j] * load_f32(value_b + t.off[j] + c);
                }
            }
        }
    }
    store_f32(out + idx, acc);
}

}  // namespace rd

// C entry points: value/output type x index type. Names are part of the Rust launcher's contract.
#define RD_MSDA_ENTRY(NAME, T, I)                                                                            \
    extern "C" __global__ void NAME(const T* value, const I* spatial_shapes, const I* level_start,         \
                                    const float* loc, const float* attn, T* out, int batch, int num_value, \
                                    int heads, int head_dim, int num_query, int levels, int points,        \
                                    int vec) {                                                             \
        (void)batch;                                                                                       \
        rd::msda_fwd_vec<T, I>(value, spatial_shapes, level_start, loc, attn, out, num_value, heads,       \
                               head_dim, num_query, levels, points, vec);                                  \
    }
#define RD_MSDA_NAIVE_ENTRY(NAME, T, I)                                                                      \
    extern "C" __global__ void NAME(const T* value, const I* spatial_shapes, const I* level_start,         \
                                    const float* loc, const float* attn, T* out, int batch, int num_value, \
                                    int heads, int head_dim, int num_query, int levels, int points) {      \
        rd::msda_naive<T, I>(value, spatial_shapes, level_start, loc, attn, out, batch, num_value, heads,  \
                             head_dim, num_query, levels, points);                                         \
    }

RD_MSDA_ENTRY(msda_fwd_f32_i64, float, long long)
RD_MSDA_ENTRY(msda_fwd_f32_i32, float, int)
RD_MSDA_ENTRY(msda_fwd_f16_i64, __half, long long)
RD_MSDA_ENTRY(msda_fwd_f16_i32, __half, int)
RD_MSDA_NAIVE_ENTRY(msda_naive_f32_i64, float, long long)
RD_MSDA_NAIVE_ENTRY(msda_naive_f32_i32, float, int)
RD_MSDA_NAIVE_ENTRY(msda_naive_f16_i64, __half, long long)
RD_MSDA_NAIVE_ENTRY(msda_naive_f16_i32, __half, int)
