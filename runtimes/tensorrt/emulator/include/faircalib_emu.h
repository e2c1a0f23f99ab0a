// faircalib CUDA emulator: runs the unchanged W4A4 kernel sources on the CPU.
//
// It covers exactly the CUDA subset of runtimes/tensorrt/kernels: thread blocks of fibers
// (one fiber per CUDA thread, switched cooperatively at __syncthreads and at every warp
// collective), dynamic and static shared memory, the warp collectives the kernels use
// (__shfl_xor_sync, ldmatrix.x4, mma.sync m16n8k64.s4 and m16n8k32.s8, with the PTX ISA's
// fragment layouts), cp.async with commit / wait_group semantics, the launch checks of the
// CUDA runtime (block size, grid limits, the dynamic shared memory opt-in), and the runtime
// calls of the harness (malloc / memcpy / memset / device properties).
//
// What it checks: the kernels' indexing, tiling, fragment layouts, tails, packing and
// pipeline ordering. cp.async copies run when issued (eager) or as late as wait_group allows
// (lazy, FAIRCALIB_EMU_CP_ASYNC=lazy); shared memory starts poisoned; fibers run in forward,
// reverse or shuffled order (FAIRCALIB_EMU_ORDER); a kernel that reads a stage before waiting
// for it, or overwrites one still being read, computes wrong values in one of these modes.
// Out-of-bounds cp.async sources, ldmatrix / cp.async addresses outside the dynamic shared
// memory, collectives with missing lanes and deadlocks abort with a message.
// What it does not check: the GPU's arithmetic (the emulator computes the same IEEE
// operations on the CPU), timing, and races between plain shared-memory stores.
//
// Build: g++ -std=c++17 -O2 -ffp-contract=off -DFAIRCALIB_EMULATE -x c++
//        -I runtimes/tensorrt/emulator/include -I runtimes/tensorrt/include
//        <kernel sources> runtimes/tensorrt/emulator/emu.cpp
// (this directory's cuda_runtime.h, cuda_runtime_api.h, cuda_fp16.h and cuda_bf16.h stand in
// for the toolkit's).
#pragma once

#ifndef FAIRCALIB_EMULATE
#define FAIRCALIB_EMULATE 1
#endif

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>

// ---- CUDA C++ keywords ---------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one block runs at a time: a static local is that block's copy
#define __align__(n) alignas(n)

// ---- runtime types -------------------------------------------------------------------------
struct dim3
{
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1)
        : x(vx)
        , y(vy)
        , z(vz)
    {
    }
};

using cudaStream_t = struct CUstream_st*;
using cudaEvent_t = struct CUevent_st*;

enum cudaError_t  // the toolkit's numeric values
{
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoDevice = 100,
    cudaErrorLaunchFailure = 719,
};

enum cudaDeviceAttr
{
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute
{
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

enum cudaMemcpyKind
{
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

struct cudaDeviceProp
{
    char name[256];
    int major;
    int minor;
    size_t sharedMemPerBlock;
    size_t sharedMemPerBlockOptin;
    int multiProcessorCount;
    int warpSize;
};

// C linkage, as in the toolkit: ctypes callers reach them by name (tests/trt/emulated_kernels.py).
extern "C"
{
    cudaError_t cudaGetDevice(int* device);
    cudaError_t cudaGetDeviceCount(int* count);
    cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
    cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
    cudaError_t cudaMalloc(void** ptr, size_t bytes);
    cudaError_t cudaFree(void* ptr);
    cudaError_t cudaMemcpy(void* dst, void const* src, size_t bytes, cudaMemcpyKind kind);
    cudaError_t cudaMemset(void* ptr, int value, size_t bytes);
    cudaError_t cudaDeviceSynchronize();
    cudaError_t cudaGetLastError();
    char const* cudaGetErrorString(cudaError_t error);
}

template <typename T>
cudaError_t cudaMalloc(T** ptr, size_t bytes)
{
    return cudaMalloc(reinterpret_cast<void**>(ptr), bytes);
}

namespace faircalib_emu
{
cudaError_t setMaxDynamicShared(void const* kernel, int bytes);
}

template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value)
{
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize)
    {
        return cudaErrorInvalidValue;
    }
    return faircalib_emu::setMaxDynamicShared(reinterpret_cast<void const*>(kernel), value);
}

// ---- fp16 / bf16 (bit patterns with round-to-nearest-even conversions) --------------------
struct __half
{
    uint16_t bits;
};
struct __nv_bfloat16
{
    uint16_t bits;
};

inline __half __float2half_rn(float f)
{
    uint32_t x;
    std::memcpy(&x, &f, 4);
    uint32_t const sign = (x >> 16) & 0x8000u;
    uint32_t const mag = x & 0x7FFFFFFFu;
    if (mag >= 0x7F800000u)  // inf, nan
    {
        return {static_cast<uint16_t>(sign | (mag > 0x7F800000u ? 0x7E00u : 0x7C00u))};
    }
    if (mag >= 0x477FF000u)  // >= 65520 rounds to inf
    {
        return {static_cast<uint16_t>(sign | 0x7C00u)};
    }
    if (mag < 0x38800000u)  // below 2^-14: a multiple of 2^-24, scaled exactly, rounded to even
    {
        float a;
        std::memcpy(&a, &mag, 4);
        return {static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a * 16777216.0f)))};
    }
    uint32_t h = ((((mag >> 23) - 112u) << 10) | ((mag >> 13) & 0x3FFu));
    uint32_t const rest = mag & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
    {
        ++h;  // a carry into the exponent is the correct rounding
    }
    return {static_cast<uint16_t>(sign | h)};
}

inline float __half2float(__half h)
{
    uint32_t const sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
    uint32_t const exp = (h.bits >> 10) & 0x1Fu;
    uint32_t const man = h.bits & 0x3FFu;
    float out;
    if (exp == 0)  // zero or subnormal: man * 2^-24
    {
        out = static_cast<float>(man) * 5.9604644775390625e-8f;
        return sign ? -out : out;
    }
    uint32_t const bits = sign | (exp == 31 ? (0xFFu << 23) | (man << 13) : ((exp + 112u) << 23) | (man << 13));
    std::memcpy(&out, &bits, 4);
    return out;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u)
    {
        return {static_cast<uint16_t>((x >> 16) | 0x40u)};  // quiet nan
    }
    return {static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16)};
}

inline float __bfloat162float(__nv_bfloat16 h)
{
    uint32_t const bits = static_cast<uint32_t>(h.bits) << 16;
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

// ---- device arithmetic: one IEEE rounding per operation (build with -ffp-contract=off) ----
inline float __fmul_rn(float a, float b)
{
    return a * b;
}
inline float __fadd_rn(float a, float b)
{
    return a + b;
}
inline float __fdiv_rn(float a, float b)
{
    return a / b;
}
inline float __fmaf_rn(float a, float b, float c)
{
    return std::fma(a, b, c);
}
inline float __int2float_rn(int v)
{
    return static_cast<float>(v);
}
inline int __float2int_rn(float v)
{
    return static_cast<int>(std::nearbyint(v));
}
template <typename T>
inline T __ldg(T const* p)
{
    return *p;
}
inline int min(int a, int b)
{
    return a < b ? a : b;
}
inline int max(int a, int b)
{
    return a > b ? a : b;
}

// per-byte a - b modulo 256
inline unsigned __vsub4(unsigned a, unsigned b)
{
    unsigned out = 0;
    for (int i = 0; i < 4; ++i)
    {
        out |= (((a >> (8 * i)) - (b >> (8 * i))) & 0xFFu) << (8 * i);
    }
    return out;
}

// c + the dot product of a's and b's four signed bytes
inline int __dp4a(int a, int b, int c)
{
    for (int i = 0; i < 4; ++i)
    {
        c += static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * i))
            * static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * i));
    }
    return c;
}

// ---- threads, blocks, shared memory, collectives -------------------------------------------
namespace faircalib_emu
{

struct ThreadIndex
{
    dim3 thread, block, blockSize, gridSize;
};

ThreadIndex const& self();
unsigned char* dynamicShared();
void syncthreads();
float shflXor(unsigned mask, float value, int laneMask);
void ldmatrixX4(uint32_t (&r)[4], uint32_t sharedAddress);
void mmaS4(int32_t (&c)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1);
void mmaS8(int32_t (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1);
void cpAsync16(uint32_t sharedAddress, void const* src, int srcBytes);
void cpAsyncCommit();
void cpAsyncWait(int pending);

// Runs body once per thread of every block; returns the launch's error, as cudaGetLastError would.
using Body = void (*)(void*);
cudaError_t runGrid(void const* kernel, dim3 grid, dim3 block, size_t sharedBytes, Body body, void* context);

template <typename... P>
struct Launch
{
    void (*kernel)(P...);
    dim3 grid, block;
    size_t sharedBytes;

    template <typename... A>
    void operator()(A&&... args) const
    {
        struct Context
        {
            void (*kernel)(P...);
            std::tuple<P...> params;
        } context{kernel, std::tuple<P...>(std::forward<A>(args)...)};
        Body const body = [](void* c) {
            auto* ctx = static_cast<Context*>(c);
            std::apply(ctx->kernel, ctx->params);
        };
        runGrid(reinterpret_cast<void const*>(kernel), grid, block, sharedBytes, body, &context);
    }
};

template <typename... P>
Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t sharedBytes, cudaStream_t)
{
    return {kernel, grid, block, sharedBytes};
}

}  // namespace faircalib_emu

#define threadIdx (::faircalib_emu::self().thread)
#define blockIdx (::faircalib_emu::self().block)
#define blockDim (::faircalib_emu::self().blockSize)
#define gridDim (::faircalib_emu::self().gridSize)

inline void __syncthreads()
{
    faircalib_emu::syncthreads();
}
inline float __shfl_xor_sync(unsigned mask, float value, int laneMask)
{
    return faircalib_emu::shflXor(mask, value, laneMask);
}
inline size_t __cvta_generic_to_shared(void const* p)
{
    return static_cast<size_t>(static_cast<unsigned char const*>(p) - faircalib_emu::dynamicShared());
}
