// Confidence-aware query pruning (ONNX op `referdino::QueryPrune`), one block per batch item.
//
// class_logits [B, N, Lt] float (-inf on padded tokens)
// self_attn    [B, N, N]  float, head-averaged probabilities, rows = targets i, columns = sources j
// keep_idx     [B, K]     long long, top-K of gate in descending order, ties -> lower index first
// gate         [B, N]     float
//
// gate_j = (softmax_j(max_k logits[j, k]) + softmax_j(sum_{i != j} attn[i, j])) / 2
//
// Dynamic shared memory: 2 * N floats. The top-K is a rank count (O(N^2) comparisons in shared memory,
// trivial for N <= 900) so the result is deterministic, needs no sort and no atomics.
// NaN gates rank before every number (as torch.topk does), among themselves by index.

// Dynamic shared memory; plugins/emu (the CPU emulation of these kernels) defines its own.
#ifndef RD_DYNAMIC_SHARED
#define RD_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]
#endif

#define RD_NEG_INF (__int_as_float(0xff800000))

namespace rd {

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Two block-wide reductions at once (half the barriers of two in a row); `scratch` holds 32 floats, and
// blockDim <= 512 (at most 16 warps: warp w's partials at scratch[w] and scratch[16 + w]). Every thread
// gets both results. blockDim % 32 == 0.
template <bool IS_MAX>
__device__ void block_reduce2(float& a, float& b, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    const float id = IS_MAX ? RD_NEG_INF : 0.0f;
    a = IS_MAX ? warp_max(a) : warp_sum(a);
    b = IS_MAX ? warp_max(b) : warp_sum(b);
    __syncthreads();  // scratch may still be read by a previous reduction
    if (lane == 0) {
        scratch[warp] = a;
        scratch[16 + warp] = b;
    }
    __syncthreads();
    a = lane < nwarps ? scratch[lane] : id;
    b = lane < nwarps ? scratch[16 + lane] : id;
    a = IS_MAX ? warp_max(a) : warp_sum(a);
    b = IS_MAX ? warp_max(b) : warp_sum(b);
}

// True when (gi, i) ranks strictly before (gj, j).
__device__ __forceinline__ bool ranks_before(float gi, int i, float gj, int j) {
    const bool ni = gi != gi;
    const bool nj = gj != gj;
    if (ni || nj) return (ni && nj) ? (i < j) : ni;
    return gi > gj || (gi == gj && i < j);
}

// Attention received by query j: column j of the [N, N] probabilities without the diagonal, in row order.
// The loads do not depend on the running sum, so 16 rows are loaded before they are added (in the same
// order): 16 loads in flight per thread instead of one, the sum unchanged to the bit.
__device__ __forceinline__ float received(const float* __restrict__ attn_b, int n, int j) {
    float s = 0.0f;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        float v[16];
#pragma unroll
        for (int k = 0; k < 16; ++k) v[k] = __ldg(attn_b + (size_t)(i + k) * n + j);
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            if (i + k != j) s += v[k];
        }
    }
    for (; i < n; ++i) {
        if (i != j) s += attn_b[(size_t)i * n + j];
    }
    return s;
}

// Best token logit of query j, by one warp (lanes stride the contiguous tokens); every lane gets it.
__device__ __forceinline__ float token_max(const float* __restrict__ logits_b, int n_tokens, int j, int lane) {
    float m = RD_NEG_INF;
    for (int k = lane; k < n_tokens; k += 32) m = fmaxf(m, logits_b[(size_t)j * n_tokens + k]);
    return warp_max(m);
}

// Block-wide: the two softmaxes over queries of text[N] and recv[N] (shared memory), averaged into the
// gate, written over recv. Returns after a barrier, so every gate is visible to the whole block.
__device__ void gates(const float* text, float* recv, int n, float* scratch) {
    float mt = RD_NEG_INF, ma = RD_NEG_INF;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        mt = fmaxf(mt, text[j]);
        ma = fmaxf(ma, recv[j]);
    }
    block_reduce2<true>(mt, ma, scratch);
    float st = 0.0f, sa = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        st += expf(text[j] - mt);
        sa += expf(recv[j] - ma);
    }
    block_reduce2<false>(st, sa, scratch);
    // Each thread rewrites only the entries it read itself.
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        recv[j] = (expf(text[j] - mt) / st + expf(recv[j] - ma) / sa) * 0.5f;
    }
    __syncthreads();
}

// Number of queries ranking before (gj, j) among the gates g[0..n), counted up to `keep`.
__device__ __forceinline__ int rank_of(const float* g, int n, int keep, float gj, int j) {
    int rank = 0;
    for (int i = 0; i < n && rank < keep; ++i) rank += ranks_before(g[i], i, gj, j) ? 1 : 0;
    return rank;
}

}  // namespace rd

// Launched with at most 512 threads (`PruneDims::launch`).
extern "C" __global__ void __launch_bounds__(512) query_prune_f32(const float* __restrict__ logits, const float* __restrict__ attn,
                                           long long* __restrict__ keep_idx, float* __restrict__ gate, int n,
                                           int n_tokens, int keep) {
    RD_DYNAMIC_SHARED(float, smem);
    __shared__ float scratch[32];
    float* text = smem;     // [N] max token logit, then text softmax
    float* recv = smem + n; // [N] attention received, then the gate

    const int b = blockIdx.x;
    const float* logits_b = logits + (size_t)b * n * n_tokens;
    const float* attn_b = attn + (size_t)b * n * n;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;

    // Max over tokens: one warp per query row.
    for (int j = warp; j < n; j += nwarps) {
        const float m = rd::token_max(logits_b, n_tokens, j, lane);
        if (lane == 0) text[j] = m;
    }
    // Attention received: consecutive threads, consecutive columns.
    for (int j = threadIdx.x; j < n; j += blockDim.x) recv[j] = rd::received(attn_b, n, j);
    __syncthreads();
    rd::gates(text, recv, n, scratch);

    // Rank of j = number of queries ranking before it; the first K ranks are the kept queries.
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float gj = recv[j];
        gate[(size_t)b * n + j] = gj;
        const int rank = rd::rank_of(recv, n, keep, gj, j);
        if (rank < keep) keep_idx[(size_t)b * keep + rank] = j;
    }
}


// ---- Spread over the GPU: two kernels instead of one block per batch item ------------------------------
//
// The single-block kernel above reads the whole [N, N] attention (3.2 MB at N = 900) from one SM and walks
// each column one row at a time. Here every step has many loads in flight:
//
// query_prune_stats_f32   grid (ceil(N/32), B), RD_PRUNE_STATS_BLOCK threads (16 warps): block c owns
//                         queries 32c..32c+31. Warp w takes their best token logits (queries w, w + 16, ...,
//                         one row of Lt contiguous floats per warp), then sums rows w, w + 16, ... of the
//                         block's 32 attention columns (128 contiguous bytes per row and warp, 16 rows in
//                         flight); the 16 partial sums are added in warp order and the diagonal taken off.
//                         Writes stats[b] = [text(N), recv(N)].
// query_prune_select_f32  grid (ceil(N/RD_PRUNE_SELECT_QUERIES), B), 256 threads, 2N floats of dynamic
//                         shared memory: every block loads both statistics and reduces the two softmaxes in
//                         the same order (so all blocks hold identical gates), then each warp ranks its
//                         queries against all N, the lanes counting N/32 gates each (same rank rule as above).
//
// Workspace: stats [B, 2, N] floats. The constants are mirrored in src/dims.rs (a unit test pins them);
// __launch_bounds__ keeps the compiler's register use within what those block sizes can launch.

#define RD_PRUNE_STATS_BLOCK 512
#define RD_PRUNE_SELECT_BLOCK 256
#define RD_PRUNE_SELECT_QUERIES 32

namespace rd {

// Column j of the attention summed over rows i = first, first + step, ... (the diagonal included), 16 rows
// loaded before they are added, in row order.
__device__ __forceinline__ float column_sum_strided(const float* __restrict__ attn_b, int n, int j, int first,
                                                    int step) {
    float s = 0.0f;
    int i = first;
    for (; i + 15 * step < n; i += 16 * step) {
        float v[16];
#pragma unroll
        for (int k = 0; k < 16; ++k) v[k] = __ldg(attn_b + (size_t)(i + k * step) * n + j);
#pragma unroll
        for (int k = 0; k < 16; ++k) s += v[k];
    }
    for (; i < n; i += step) s += __ldg(attn_b + (size_t)i * n + j);
    return s;
}

__device__ __forceinline__ int warp_sum_int(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

}  // namespace rd

extern "C" __global__ void __launch_bounds__(RD_PRUNE_STATS_BLOCK) query_prune_stats_f32(const float* __restrict__ logits, const float* __restrict__ attn,
                                                 float* __restrict__ stats, int n, int n_tokens) {
    __shared__ float partial[RD_PRUNE_STATS_BLOCK / 32][32];
    const int b = blockIdx.y;
    const int j0 = blockIdx.x * 32;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    const float* attn_b = attn + (size_t)b * n * n;
    const float* logits_b = logits + (size_t)b * n * n_tokens;
    float* text = stats + (size_t)b * 2 * n;
    float* recv = text + n;
    const int queries = min(32, n - j0);
    for (int q = warp; q < queries; q += nwarps) {
        const float m = rd::token_max(logits_b, n_tokens, j0 + q, lane);
        if (lane == 0) text[j0 + q] = m;
    }
    const int j = j0 + lane;
    partial[warp][lane] = j < n ? rd::column_sum_strided(attn_b, n, j, warp, nwarps) : 0.0f;
    __syncthreads();
    // The whole column minus its diagonal, rather than skipping row j in one warp's share: which warp
    // skips would change the rounding from column to column, and equal columns must give equal gates
    // (ties rank by index). A non-finite diagonal (or sum) cannot be taken off again (NaN - NaN,
    // inf - inf), and the diagonal is not part of the result: then the column is summed once more
    // without it, in row order, as the one-block kernel does (only in that degenerate case).
    if (warp == 0 && j < n) {
        float s = 0.0f;
        for (int w = 0; w < nwarps; ++w) s += partial[w][lane];
        const float diag = __ldg(attn_b + (size_t)j * n + j);
        recv[j] = isfinite(diag) && isfinite(s) ? s - diag : rd::received(attn_b, n, j);
    }
}


extern "C" __global__ void __launch_bounds__(RD_PRUNE_SELECT_BLOCK) query_prune_select_f32(const float* __restrict__ stats, long long* __restrict__ keep_idx,
                                                  float* __restrict__ gate, int n, int keep) {
    RD_DYNAMIC_SHARED(float, smem);
    __shared__ float scratch[32];
    float* text = smem;
    float* recv = smem + n;
    const int b = blockIdx.y;
    const float* st_b = stats + (size_t)b * 2 * n;
    for (int j = threadIdx.x; j < 2 * n; j += blockDim.x) smem[j] = st_b[j];
    __syncthreads();

    rd::gates(text, recv, n, scratch);

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    const int q0 = blockIdx.x * RD_PRUNE_SELECT_QUERIES;
    const int queries = min(RD_PRUNE_SELECT_QUERIES, n - q0);
    // Warp-uniform loop: every lane of a warp takes part in each count's shuffles.
    for (int q = warp; q < queries; q += nwarps) {
        const int j = q0 + q;
        const float gj = recv[j];
        int before = 0;
        for (int i = lane; i < n; i += 32) before += rd::ranks_before(recv[i], i, gj, j) ? 1 : 0;
        const int rank = rd::warp_sum_int(before);
        if (lane == 0) {
            gate[(size_t)b * n + j] = gj;
            if (rank < keep) keep_idx[(size_t)b * keep + rank] = j;
        }
    }
}
