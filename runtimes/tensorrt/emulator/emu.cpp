// The CPU side of faircalib_emu.h: fibers for CUDA threads, barriers, warp collectives,
// cp.async, and the runtime calls. One OS thread runs one block at a time; its fibers switch
// only at __syncthreads and at warp collectives, so a run is deterministic for a given
// FAIRCALIB_EMU_ORDER.
//
// Environment:
//   FAIRCALIB_EMU_SM        compute capability to report: 80, 86, 89 (default), 90; the
//                           shared-memory opt-in limit is that of a real card of the arch
//   FAIRCALIB_EMU_CP_ASYNC  eager (copy when issued, default) | lazy (copy at the last
//                           moment cp.async.wait_group allows)
//   FAIRCALIB_EMU_ORDER     forward (default) | reverse | shuffled: the order fibers run in
#include "faircalib_emu.h"

#include <ucontext.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace faircalib_emu
{
namespace
{

[[noreturn]] void fatal(char const* format, ...)
{
    std::va_list args;
    va_start(args, format);
    std::fprintf(stderr, "faircalib-emu: ");
    std::vfprintf(stderr, format, args);
    std::fprintf(stderr, "\n");
    va_end(args);
    std::abort();
}

std::string env(char const* name, char const* fallback)
{
    char const* value = std::getenv(name);
    return value != nullptr && *value != '\0' ? value : fallback;
}

struct Device
{
    int major, minor;
    int optinShared;  // cudaDevAttrMaxSharedMemoryPerBlockOptin of a real card of that arch
};

Device const& device()
{
    static Device const d = [] {
        std::string const sm = env("FAIRCALIB_EMU_SM", "89");
        if (sm == "80")
            return Device{8, 0, 166912};
        if (sm == "86")
            return Device{8, 6, 101376};
        if (sm == "89")
            return Device{8, 9, 101376};
        if (sm == "90")
            return Device{9, 0, 232448};
        fatal("FAIRCALIB_EMU_SM=%s: expected 80, 86, 89 or 90 (the built architectures)", sm.c_str());
    }();
    return d;
}

bool lazyCopies()
{
    static bool const lazy = [] {
        std::string const mode = env("FAIRCALIB_EMU_CP_ASYNC", "eager");
        if (mode != "eager" && mode != "lazy")
            fatal("FAIRCALIB_EMU_CP_ASYNC=%s: expected eager or lazy", mode.c_str());
        return mode == "lazy";
    }();
    return lazy;
}

enum class Order
{
    kForward,
    kReverse,
    kShuffled
};

Order order()
{
    static Order const o = [] {
        std::string const name = env("FAIRCALIB_EMU_ORDER", "forward");
        if (name == "forward")
            return Order::kForward;
        if (name == "reverse")
            return Order::kReverse;
        if (name == "shuffled")
            return Order::kShuffled;
        fatal("FAIRCALIB_EMU_ORDER=%s: expected forward, reverse or shuffled", name.c_str());
    }();
    return o;
}

constexpr size_t kStackBytes = 64 * 1024;
constexpr int kWarp = 32;

struct Copy
{
    unsigned char* dst;
    unsigned char const* src;
    int bytes;
};

struct Barrier
{
    int expected = 0;
    int arrived = 0;
    uint64_t generation = 0;
};

enum Op : uint32_t
{
    kShfl = 1,
    kLdmatrix,
    kMmaS4,
    kMmaS8
};

struct Slot
{
    uint32_t op;
    uint32_t in[6];
};

struct Warp
{
    Barrier barrier;
    Slot slots[2][kWarp];  // double-buffered by the parity of the collective's index
};

struct Fiber
{
    ucontext_t context;
    ThreadIndex index;
    int warp = 0;
    int lane = 0;
    Barrier* waitingOn = nullptr;
    uint64_t waitGeneration = 0;
    bool done = false;
    uint64_t collectives = 0;
    std::vector<Copy> open;                  // cp.async issued since the last commit
    std::deque<std::vector<Copy>> committed;  // committed groups not yet waited for
};

struct Block
{
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    Barrier barrier;
    ucontext_t scheduler;
    Fiber* current = nullptr;
    unsigned char* shared = nullptr;
    size_t sharedBytes = 0;
    Body body = nullptr;
    void* context = nullptr;
};

thread_local Block* tBlock = nullptr;
thread_local cudaError_t tLastError = cudaSuccess;
std::map<uintptr_t, size_t> gAllocations;       // cudaMalloc'd ranges
std::map<void const*, int> gMaxDynamicShared;  // cudaFuncSetAttribute opt-ins

Block& block()
{
    if (tBlock == nullptr || tBlock->current == nullptr)
        fatal("a device function was called outside a kernel launch");
    return *tBlock;
}

Fiber& current()
{
    return *block().current;
}

void release(Barrier& bar)
{
    bar.arrived = 0;
    ++bar.generation;
}

void arrive(Barrier& bar)
{
    Block& b = block();
    Fiber& f = *b.current;
    if (++bar.arrived == bar.expected)
    {
        release(bar);
        return;
    }
    f.waitingOn = &bar;
    f.waitGeneration = bar.generation;
    swapcontext(&f.context, &b.scheduler);
}

void fiberEntry()
{
    Block& b = *tBlock;
    b.body(b.context);
    Fiber& f = *b.current;
    f.done = true;
    // exited threads leave the block barrier; a warp collective needs every lane
    if (--b.barrier.expected > 0 && b.barrier.arrived == b.barrier.expected)
        release(b.barrier);
    Warp& w = b.warps[f.warp];
    if (w.barrier.arrived > 0)
        fatal("thread %u exited while lanes of its warp wait in a collective", f.index.thread.x);
    --w.barrier.expected;
}  // returns to the scheduler through uc_link

// Every lane deposits its inputs, waits for the whole warp, then reads all lanes' inputs.
Slot const* exchange(Op op, std::initializer_list<uint32_t> in)
{
    Block& b = block();
    Fiber& f = *b.current;
    Warp& w = b.warps[f.warp];
    if (w.barrier.expected != kWarp)
        fatal("warp collective with %d of 32 lanes active (thread %u)", w.barrier.expected, f.index.thread.x);
    Slot* slots = w.slots[f.collectives & 1];
    slots[f.lane].op = op;
    std::copy(in.begin(), in.end(), slots[f.lane].in);
    arrive(w.barrier);
    for (int l = 0; l < kWarp; ++l)
        if (slots[l].op != op)
            fatal("lanes of warp %d are in different collectives (%u vs %u): divergent warp", f.warp, slots[l].op, op);
    ++f.collectives;
    return slots;
}

unsigned char* sharedAt(uint32_t address, size_t bytes, char const* what)
{
    Block& b = block();
    if (address % 16 != 0 || address + bytes > b.sharedBytes)
        fatal("%s at shared address %u (+%zu): misaligned or beyond the %zu bytes of dynamic shared memory", what,
            address, bytes, b.sharedBytes);
    return b.shared + address;
}

bool insideAllocation(void const* p, size_t bytes)
{
    auto const addr = reinterpret_cast<uintptr_t>(p);
    auto it = gAllocations.upper_bound(addr);
    if (it == gAllocations.begin())
        return false;
    --it;
    return addr + bytes <= it->first + it->second;
}

void perform(std::vector<Copy> const& group)
{
    for (Copy const& c : group)
    {
        std::memcpy(c.dst, c.src, c.bytes);
        std::memset(c.dst + c.bytes, 0, 16 - c.bytes);
    }
}

int nibble(uint32_t word, int i)
{
    return static_cast<int32_t>(word << (28 - 4 * i)) >> 28;
}

int byteAt(uint32_t word, int i)
{
    return static_cast<int8_t>(word >> (8 * i));
}

// One lane's D = A B + C of an m16 n8 MMA, from every lane's fragments (PTX ISA layouts:
// lane = 4 * groupID + threadID_in_group; A register 0/1/2/3 = rows g / g+8 / g / g+8 of the
// low / low / high / high half of K; B register 0/1 = low / high half of K of column g).
template <int kPerReg>
void mma(int32_t (&c)[4], Slot const* slots, int lane, int (*element)(uint32_t, int))
{
    constexpr int kHalf = 4 * kPerReg;  // K per register half: 32 (s4) or 16 (s8)
    int const g = lane >> 2;
    int const t = lane & 3;
    for (int e = 0; e < 4; ++e)
    {
        int const row = g + 8 * (e >> 1);
        int const col = 2 * t + (e & 1);
        int32_t acc = c[e];
        for (int k = 0; k < 2 * kHalf; ++k)
        {
            int const hi = k / kHalf;
            int const kk = k % kHalf;
            Slot const& sa = slots[(row & 7) * 4 + kk / kPerReg];
            Slot const& sb = slots[col * 4 + kk / kPerReg];
            acc += element(sa.in[(row >> 3) + 2 * hi], kk % kPerReg) * element(sb.in[4 + hi], kk % kPerReg);
        }
        c[e] = acc;
    }
}

void runBlock(Block& b, char* stacks, dim3 blockIdx3, dim3 grid, dim3 blockDim3)
{
    int const threads = static_cast<int>(blockDim3.x * blockDim3.y * blockDim3.z);
    b.fibers.assign(threads, Fiber{});
    b.warps.assign((threads + kWarp - 1) / kWarp, Warp{});
    b.barrier = Barrier{};
    b.barrier.expected = threads;
    for (int w = 0; w < static_cast<int>(b.warps.size()); ++w)
        b.warps[w].barrier.expected = std::min(kWarp, threads - w * kWarp);
    std::memset(b.shared, 0xA5, b.sharedBytes);  // poison: reading before writing shows
    for (int i = 0; i < threads; ++i)
    {
        Fiber& f = b.fibers[i];
        f.index.thread = dim3(i % blockDim3.x, i / blockDim3.x % blockDim3.y, i / (blockDim3.x * blockDim3.y));
        f.index.block = blockIdx3;
        f.index.blockSize = blockDim3;
        f.index.gridSize = grid;
        f.warp = i / kWarp;
        f.lane = i % kWarp;
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = stacks + static_cast<size_t>(i) * kStackBytes;
        f.context.uc_stack.ss_size = kStackBytes;
        f.context.uc_link = &b.scheduler;
        makecontext(&f.context, fiberEntry, 0);
    }
    std::vector<int> schedule(threads);
    for (int i = 0; i < threads; ++i)
        schedule[i] = order() == Order::kReverse ? threads - 1 - i : i;
    std::mt19937 rng(blockIdx3.x * 7919u + blockIdx3.y * 104729u + blockIdx3.z);
    int remaining = threads;
    while (remaining > 0)
    {
        if (order() == Order::kShuffled)
            std::shuffle(schedule.begin(), schedule.end(), rng);
        bool progress = false;
        for (int i : schedule)
        {
            Fiber& f = b.fibers[i];
            if (f.done || (f.waitingOn != nullptr && f.waitingOn->generation == f.waitGeneration))
                continue;
            f.waitingOn = nullptr;
            b.current = &f;
            swapcontext(&b.scheduler, &f.context);
            b.current = nullptr;
            remaining -= f.done ? 1 : 0;
            progress = true;
        }
        if (!progress)
            fatal("deadlock in block (%u, %u, %u): every live thread waits at a barrier another never reaches",
                blockIdx3.x, blockIdx3.y, blockIdx3.z);
    }
}

}  // namespace

ThreadIndex const& self()
{
    return current().index;
}

unsigned char* dynamicShared()
{
    return block().shared;
}

void syncthreads()
{
    arrive(block().barrier);
}

float shflXor(unsigned mask, float value, int laneMask)
{
    if (mask != 0xFFFFFFFFu)
        fatal("__shfl_xor_sync with a partial mask is not emulated");
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    int const lane = current().lane;
    Slot const* slots = exchange(kShfl, {bits});
    int const source = lane ^ laneMask;
    float out = value;
    if (source < kWarp)
        std::memcpy(&out, &slots[source].in[0], 4);
    return out;
}

void ldmatrixX4(uint32_t (&r)[4], uint32_t sharedAddress)
{
    int const lane = current().lane;
    sharedAt(sharedAddress, 16, "ldmatrix row");
    Slot const* slots = exchange(kLdmatrix, {sharedAddress});
    // matrix j's row i comes from the address of lane 8j + i; lane l gets word l % 4 of row l / 4
    for (int j = 0; j < 4; ++j)
        std::memcpy(&r[j], sharedAt(slots[8 * j + lane / 4].in[0], 16, "ldmatrix row") + 4 * (lane % 4), 4);
}

void mmaS4(int32_t (&c)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1)
{
    int const lane = current().lane;
    Slot const* slots = exchange(kMmaS4, {a[0], a[1], a[2], a[3], b0, b1});
    mma<8>(c, slots, lane, nibble);
}

void mmaS8(int32_t (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1)
{
    int const lane = current().lane;
    Slot const* slots = exchange(kMmaS8, {a0, a1, a2, a3, b0, b1});
    mma<4>(c, slots, lane, byteAt);
}

void cpAsync16(uint32_t sharedAddress, void const* src, int srcBytes)
{
    if (srcBytes < 0 || srcBytes > 16)
        fatal("cp.async src-size %d outside 0..16", srcBytes);
    if (reinterpret_cast<uintptr_t>(src) % 16 != 0)
        fatal("cp.async 16-byte copy from a misaligned global address %p", src);
    if (srcBytes > 0 && !insideAllocation(src, srcBytes))
        fatal("cp.async reads %d bytes at %p, outside every cudaMalloc'd buffer", srcBytes, src);
    Copy const copy{sharedAt(sharedAddress, 16, "cp.async destination"), static_cast<unsigned char const*>(src), srcBytes};
    Fiber& f = current();
    if (lazyCopies())
        f.open.push_back(copy);
    else
        perform({copy});
}

void cpAsyncCommit()
{
    Fiber& f = current();
    f.committed.push_back(std::move(f.open));
    f.open.clear();
}

void cpAsyncWait(int pending)
{
    Fiber& f = current();
    while (static_cast<int>(f.committed.size()) > pending)
    {
        perform(f.committed.front());
        f.committed.pop_front();
    }
}

cudaError_t setMaxDynamicShared(void const* kernel, int bytes)
{
    if (bytes < 0 || bytes > device().optinShared)
        return cudaErrorInvalidValue;
    gMaxDynamicShared[kernel] = bytes;
    return cudaSuccess;
}

cudaError_t runGrid(void const* kernel, dim3 grid, dim3 blockDim3, size_t sharedBytes, Body body, void* context)
{
    auto fail = [](cudaError_t e) {
        tLastError = e;
        return e;
    };
    size_t const threads = static_cast<size_t>(blockDim3.x) * blockDim3.y * blockDim3.z;
    if (threads == 0 || threads > 1024 || blockDim3.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0
        || grid.x > 0x7FFFFFFFu || grid.y > 65535 || grid.z > 65535)
        return fail(cudaErrorInvalidConfiguration);
    auto const optIn = gMaxDynamicShared.find(kernel);
    size_t const allowed = optIn != gMaxDynamicShared.end() ? static_cast<size_t>(optIn->second) : 48 * 1024;
    if (sharedBytes > allowed)
        return fail(cudaErrorInvalidValue);  // what the runtime says without the opt-in

    std::unique_ptr<char[]> const stacks(new char[threads * kStackBytes]);  // uninitialized
    std::vector<unsigned char> shared(sharedBytes);
    Block b;
    b.shared = shared.data();
    b.sharedBytes = sharedBytes;
    b.body = body;
    b.context = context;
    Block* const outer = tBlock;
    tBlock = &b;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x)
                runBlock(b, stacks.get(), dim3(x, y, z), grid, blockDim3);
    tBlock = outer;
    return cudaSuccess;
}

}  // namespace faircalib_emu

// ---- runtime API ---------------------------------------------------------------------------
using faircalib_emu::device;

cudaError_t cudaGetDevice(int* dev)
{
    *dev = 0;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count)
{
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev)
{
    if (dev != 0)
        return cudaErrorInvalidValue;
    switch (attr)
    {
    case cudaDevAttrComputeCapabilityMajor: *value = device().major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = device().minor; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = device().optinShared; return cudaSuccess;
    }
    return cudaErrorInvalidValue;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int dev)
{
    if (dev != 0)
        return cudaErrorInvalidValue;
    *prop = cudaDeviceProp{};
    std::snprintf(prop->name, sizeof(prop->name), "faircalib CPU emulator");
    prop->major = device().major;
    prop->minor = device().minor;
    prop->sharedMemPerBlock = 48 * 1024;
    prop->sharedMemPerBlockOptin = static_cast<size_t>(device().optinShared);
    prop->multiProcessorCount = 1;
    prop->warpSize = 32;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes)
{
    size_t const rounded = (bytes + 255) / 256 * 256;
    *ptr = std::aligned_alloc(256, rounded > 0 ? rounded : 256);
    if (*ptr == nullptr)
        return cudaErrorMemoryAllocation;
    faircalib_emu::gAllocations[reinterpret_cast<uintptr_t>(*ptr)] = bytes;
    return cudaSuccess;
}

cudaError_t cudaFree(void* ptr)
{
    if (ptr == nullptr)
        return cudaSuccess;
    if (faircalib_emu::gAllocations.erase(reinterpret_cast<uintptr_t>(ptr)) == 0)
        return cudaErrorInvalidValue;
    std::free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, void const* src, size_t bytes, cudaMemcpyKind)
{
    std::memcpy(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, size_t bytes)
{
    std::memset(ptr, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize()
{
    return cudaSuccess;
}

cudaError_t cudaGetLastError()
{
    cudaError_t const e = faircalib_emu::tLastError;
    faircalib_emu::tLastError = cudaSuccess;
    return e;
}

char const* cudaGetErrorString(cudaError_t error)
{
    switch (error)
    {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unknown error";
}
