// Runs one kernel launch on the CPU: the blocks one after another, the threads of a block as fibers
// (ucontext) on the calling OS thread, switched only at __syncthreads and warp shuffles. Deterministic
// for a given schedule, and a barrier that can never complete (threads of one block waiting at
// different barriers) is reported instead of hanging.
//
// The schedule is the order in which the blocks run and, between two synchronisation points, the
// threads: ascending, descending, or a seeded shuffle. A kernel whose threads (or blocks) communicate
// without a barrier between them reads a value written before or after its read depending on that
// order; its output then differs between schedules, which the tests compare bit for bit.
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>
#include <vector>

#include "cuda_emu.h"

extern "C" void* rde_guarded_alloc(std::size_t bytes, void** region, std::size_t* region_len);

rde_dim3 threadIdx;
rde_dim3 blockIdx;
rde_dim3 blockDim;
rde_dim3 gridDim;

namespace {

enum class State { Ready, AtBarrier, AtWarp, Done };

struct Fiber {
    ucontext_t ctx;
    State state = State::Ready;
    // Warp waits so far (two per shuffle): the lanes a warp releases together must be at the same one.
    std::uint64_t warp_waits = 0;
};

constexpr std::size_t kStackBytes = 128 * 1024;
// What a block may use without opting in (the launchers never opt in), as on every GPU since sm_20.
constexpr std::size_t kMaxSharedBytes = 48 * 1024;

// An mmap'd region with inaccessible pages around its data (see rde_guarded_alloc).
struct Region {
    void* base = nullptr;
    std::size_t len = 0;
    unsigned char* data = nullptr;
    Region() = default;
    Region(const Region&) = delete;
    Region& operator=(const Region&) = delete;
    Region(Region&& o) noexcept : base(o.base), len(o.len), data(o.data) { o.base = nullptr; }
    ~Region() {
        if (base) munmap(base, len);
    }
};

// Order of blocks and of threads between synchronisation points.
enum class Schedule : unsigned { Forward = 0, Reverse = 1, Shuffled = 2 };

// splitmix64: a small, seedable generator for the shuffled schedule (reproducible from the seed).
struct Rng {
    std::uint64_t s;
    std::uint64_t next() {
        std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
};

// Puts 0..n-1 into `order` as `schedule` says (a fresh permutation from `rng` when shuffled).
void arrange(std::vector<unsigned>& order, Schedule schedule, Rng& rng) {
    const std::size_t n = order.size();
    for (std::size_t i = 0; i < n; ++i) {
        order[i] = (unsigned)(schedule == Schedule::Reverse ? n - 1 - i : i);
    }
    if (schedule == Schedule::Shuffled) {
        for (std::size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng.next() % i]);
    }
}

struct Launch {
    ucontext_t scheduler;
    std::vector<Fiber> fibers;
    std::vector<Region> stacks;  // a guard page below each: an overflow faults instead of corrupting
    Fiber* current = nullptr;
    void (*body)(void*) = nullptr;
    void* arg = nullptr;
    Region shared;                     // dynamic shared memory, guarded like the kernels' buffers
    std::size_t shared_bytes = 0;
    std::vector<std::uint64_t> lanes;  // one exchange slot per thread
    Schedule schedule = Schedule::Forward;
    Rng rng{0};
    std::vector<unsigned> order;       // this round's thread order
    std::vector<unsigned> eligible;    // warps whose every live lane waits at a shuffle
};

Launch* g_launch = nullptr;

bool guarded(std::size_t bytes, Region& r) {
    void* base = nullptr;
    std::size_t len = 0;
    void* data = rde_guarded_alloc(bytes, &base, &len);
    if (!data) return false;
    r.base = base;
    r.len = len;
    r.data = static_cast<unsigned char*>(data);
    return true;
}

std::mutex g_lock;  // one launch at a time: `__shared__` statics and these globals are per program

void fiber_main() {
    g_launch->body(g_launch->arg);
    g_launch->current->state = State::Done;
    // Returning resumes uc_link, the scheduler.
}

void wait_as(State s) {
    Fiber* f = g_launch->current;
    f->state = s;
    if (s == State::AtWarp) ++f->warp_waits;
    swapcontext(&f->ctx, &g_launch->scheduler);
}


// Whether warp `w` can be released from its shuffle: 1 when every live lane waits at the same one, 0
// when not all of them wait yet, -1 (with `err`) for a shuffle that is undefined on a GPU.
int warp_state(const Launch& l, unsigned w, char* err, std::size_t err_len) {
    const unsigned lo = w * 32, hi = std::min(blockDim.x, lo + 32);
    unsigned live = 0, at_warp = 0;
    for (unsigned t = lo; t < hi; ++t) {
        live += l.fibers[t].state != State::Done;
        at_warp += l.fibers[t].state == State::AtWarp;
    }
    if (live == 0 || at_warp != live) return 0;
    // A full-mask shuffle needs every lane of the warp, at the same shuffle: one with exited lanes or
    // lanes at different shuffles is undefined on a GPU (hangs or garbage).
    const std::uint64_t first = l.fibers[lo].warp_waits;
    for (unsigned t = lo; t < hi; ++t) {
        const Fiber& f = l.fibers[t];
        if (f.state == State::Done || f.warp_waits != first) {
            std::snprintf(err, err_len, "block (%u, %u) warp %u: a warp shuffle %s (thread %u): undefined on a GPU",
                          blockIdx.x, blockIdx.y, w,
                          f.state == State::Done ? "with exited lanes" : "by lanes at different shuffles", t);
            return -1;
        }
    }
    return 1;
}

void release_warp(Launch& l, unsigned w) {
    const unsigned lo = w * 32, hi = std::min(blockDim.x, lo + 32);
    for (unsigned t = lo; t < hi; ++t) l.fibers[t].state = State::Ready;
}

// Resumes fiber `t` until it waits or ends.
void resume(Launch& l, unsigned t) {
    l.current = &l.fibers[t];
    threadIdx = {t, 0, 0};
    swapcontext(&l.scheduler, &l.fibers[t].ctx);
}

// With nobody ready: releases the block's barrier when every live thread waits at it, else every warp
// whose lanes all wait at a shuffle. Returns 1 when it released something, 0 when every thread is done,
// -1 (with `err`) when nothing can ever run again.
int release_waiting(Launch& l, char* err, std::size_t err_len) {
    const unsigned n = blockDim.x;
    unsigned live = 0, at_barrier = 0;
    for (unsigned t = 0; t < n; ++t) {
        live += l.fibers[t].state != State::Done;
        at_barrier += l.fibers[t].state == State::AtBarrier;
    }
    if (live == 0) return 0;
    if (at_barrier == live) {
        for (unsigned t = 0; t < n; ++t) {
            if (l.fibers[t].state == State::AtBarrier) l.fibers[t].state = State::Ready;
        }
        return 1;
    }
    bool released = false;
    for (unsigned w = 0; w < (n + 31) / 32; ++w) {
        const int s = warp_state(l, w, err, err_len);
        if (s < 0) return -1;
        if (s == 1) {
            release_warp(l, w);
            released = true;
        }
    }
    if (released) return 1;
    std::snprintf(err, err_len,
                  "block (%u, %u): %u live threads, %u at __syncthreads, the rest at warp shuffles of "
                  "partly exited or diverged warps: a barrier that never completes",
                  blockIdx.x, blockIdx.y, live, at_barrier);
    return -1;
}

// Forward: every ready thread in ascending order runs to its next wait, then the waits every thread
// has reached are released; the warps advance in step.
bool run_in_step(Launch& l, char* err, std::size_t err_len) {
    for (;;) {
        bool ran = false;
        for (unsigned t = 0; t < blockDim.x; ++t) {
            if (l.fibers[t].state != State::Ready) continue;
            resume(l, t);
            ran = true;
        }
        if (ran) continue;
        const int r = release_waiting(l, err, err_len);
        if (r <= 0) return r == 0;
    }
}

// Reverse and shuffled: one warp at a time (the highest with a ready lane, or a random one) runs its
// ready lanes (in descending or shuffled order) to their next wait, and a warp whose lanes all wait at
// a shuffle is released at once. Warps thus drift apart as on a GPU: in reverse each runs on to the
// next barrier before a lower one starts; shuffled, they interleave at random shuffles. A value one
// warp reads before another has written it, or after another has overwritten it, changes the output.
bool run_drifting(Launch& l, char* err, std::size_t err_len) {
    const unsigned n = blockDim.x, warps = (n + 31) / 32;
    for (;;) {
        l.eligible.clear();
        for (unsigned w = 0; w < warps; ++w) {
            const unsigned lo = w * 32, hi = std::min(n, lo + 32);
            for (unsigned t = lo; t < hi; ++t) {
                if (l.fibers[t].state == State::Ready) {
                    l.eligible.push_back(w);
                    break;
                }
            }
        }
        if (l.eligible.empty()) {
            const int r = release_waiting(l, err, err_len);
            if (r <= 0) return r == 0;
            continue;
        }
        const unsigned w = l.schedule == Schedule::Reverse ? l.eligible.back()
                                                           : l.eligible[l.rng.next() % l.eligible.size()];
        const unsigned lo = w * 32, hi = std::min(n, lo + 32);
        l.order.resize(hi - lo);
        arrange(l.order, l.schedule, l.rng);
        for (unsigned k : l.order) {
            if (l.fibers[lo + k].state == State::Ready) resume(l, lo + k);
        }
        const int s = warp_state(l, w, err, err_len);
        if (s < 0) return false;
        if (s == 1) release_warp(l, w);
    }
}

// Runs the fibers of one block until all are done. Returns false (with `err`) on a barrier that cannot
// complete or a shuffle that is undefined.
bool run_block(Launch& l, char* err, std::size_t err_len) {
    const unsigned n = blockDim.x;
    // Garbage in shared memory, so that a read before any write gives odd values, not zeros; another
    // garbage for each schedule (huge floats in reverse), so that such a read changes the output too.
    const int fill = l.schedule == Schedule::Forward   ? 0xA5
                     : l.schedule == Schedule::Reverse ? 0x7F
                                                       : (int)(l.rng.next() & 0xFF);
    std::memset(l.shared.data, fill, l.shared_bytes);
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = l.fibers[t];
        f.state = State::Ready;
        f.warp_waits = 0;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = l.stacks[t].data;
        f.ctx.uc_stack.ss_size = kStackBytes;
        f.ctx.uc_link = &l.scheduler;
        makecontext(&f.ctx, fiber_main, 0);
    }
    return l.schedule == Schedule::Forward ? run_in_step(l, err, err_len) : run_drifting(l, err, err_len);
}

// A kernel that touches a guard page (outside a guarded buffer, see rde_guarded_alloc) lands here: say
// which thread did it, then abort (the process cannot go on: the access was the kernel's own).
void on_fault(int, siginfo_t* info, void*) {
    char msg[256];
    const int n = std::snprintf(msg, sizeof msg,
                                "referdino-kernel-emu: the kernel touched %p, outside every buffer it was given "
                                "(guard page) or past its 128 KiB stack, in block (%u, %u) thread %u\n",
                                info->si_addr, blockIdx.x, blockIdx.y, threadIdx.x);
    if (n > 0) {
        ssize_t w = write(2, msg, (std::size_t)n);
        (void)w;
    }
    std::abort();
}

}  // namespace

extern "C" void* rde_guarded_alloc(std::size_t bytes, void** region, std::size_t* region_len) {
    const std::size_t page = (std::size_t)sysconf(_SC_PAGESIZE);
    // The data ends exactly at the upper guard page, so a one-element overrun faults. Its start is then
    // aligned as far as `bytes` is a multiple of 16, 8, ...: slices of T stay T-aligned, and the vector
    // loads' alignment is the caller's to check (as the CUDA launcher does).
    const std::size_t data = bytes;
    const std::size_t pages = (data + page - 1) / page + (data == 0 ? 1 : 0);
    const std::size_t len = (pages + 2) * page;
    void* base = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    unsigned char* b = static_cast<unsigned char*>(base);
    // One inaccessible page on each side; the data ends where the upper one begins.
    if (mprotect(b, page, PROT_NONE) != 0 || mprotect(b + (pages + 1) * page, page, PROT_NONE) != 0) {
        munmap(base, len);
        return nullptr;
    }
    *region = base;
    *region_len = len;
    return b + (pages + 1) * page - data;
}

extern "C" void rde_guarded_free(void* region, std::size_t region_len) { munmap(region, region_len); }

void* rde_dynamic_shared() { return g_launch->shared.data; }

void __syncthreads() { wait_as(State::AtBarrier); }

std::uint64_t rde_warp_exchange(std::uint64_t v, int src) {
    const unsigned t = threadIdx.x;
    const unsigned base = t & ~31u;
    g_launch->lanes[t] = v;
    wait_as(State::AtWarp);
    const std::uint64_t r = g_launch->lanes[base + (unsigned)src];
    // Nobody overwrites its slot before every lane has read.
    wait_as(State::AtWarp);
    return r;
}

// `schedule`: 0 ascending, 1 descending, 2 shuffled from `seed` (blocks, and threads between
// synchronisation points).
extern "C" int rde_launch(unsigned grid_x, unsigned grid_y, unsigned block_x, std::size_t shared_bytes,
                          void (*body)(void*), void* arg, unsigned schedule, std::uint64_t seed, char* err,
                          std::size_t err_len) {
    std::lock_guard<std::mutex> guard(g_lock);
    if (schedule > 2) {
        std::snprintf(err, err_len, "invalid schedule %u", schedule);
        return 1;
    }
    if (block_x == 0 || block_x > 1024 || grid_x == 0 || grid_y == 0 || shared_bytes > kMaxSharedBytes ||
        (std::uint64_t)grid_x * grid_y > 0xFFFFFFFFull) {
        std::snprintf(err, err_len, "invalid launch: grid (%u, %u), block %u, %zu B shared (at most 1024 threads, "
                      "%zu B shared)", grid_x, grid_y, block_x, shared_bytes, kMaxSharedBytes);
        return 1;
    }
    Launch l;
    l.body = body;
    l.arg = arg;
    l.fibers.resize(block_x);
    l.stacks.resize(block_x);
    bool ok = guarded(shared_bytes, l.shared);
    for (unsigned t = 0; t < block_x && ok; ++t) ok = guarded(kStackBytes, l.stacks[t]);
    if (!ok) {
        std::snprintf(err, err_len, "emulated launch: mmap of fiber stacks or shared memory failed");
        return 1;
    }
    l.shared_bytes = shared_bytes;
    l.lanes.assign(((block_x + 31) / 32) * 32, 0);
    l.schedule = static_cast<Schedule>(schedule);
    l.rng = Rng{seed};
    l.order.resize(block_x);
    l.eligible.reserve((block_x + 31) / 32);
    g_launch = &l;
    struct sigaction fault = {}, old_segv = {}, old_bus = {};
    fault.sa_sigaction = on_fault;
    // On the thread's alternate signal stack (Rust sets one up for its threads): a fiber's stack that
    // overflowed into its guard page has no room left for the handler.
    fault.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&fault.sa_mask);
    sigaction(SIGSEGV, &fault, &old_segv);
    sigaction(SIGBUS, &fault, &old_bus);
    blockDim = {block_x, 1, 1};
    gridDim = {grid_x, grid_y, 1};
    int rc = 0;
    std::vector<unsigned> blocks((std::size_t)grid_x * grid_y);
    arrange(blocks, l.schedule, l.rng);
    for (std::size_t i = 0; i < blocks.size() && rc == 0; ++i) {
        blockIdx = {blocks[i] % grid_x, blocks[i] / grid_x, 0};
        if (!run_block(l, err, err_len)) rc = 2;
    }
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    g_launch = nullptr;
    return rc;
}
