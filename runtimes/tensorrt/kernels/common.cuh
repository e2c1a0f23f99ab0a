// Small device helpers shared by the quantize and GEMM kernels.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "faircalib/kernels.h"

// kernel<<<grid, block, sharedBytes, stream>>>, or the CPU emulator's launch
// (runtimes/tensorrt/emulator) when built with FAIRCALIB_EMULATE. Use as
// FAIRCALIB_LAUNCH(kernel, grid, block, sharedBytes, stream)(args...).
#ifdef FAIRCALIB_EMULATE
#define FAIRCALIB_LAUNCH(kernel, grid, block, sharedBytes, stream)                                                     \
    ::faircalib_emu::launch(kernel, grid, block, sharedBytes, stream)
#else
#define FAIRCALIB_LAUNCH(kernel, grid, block, sharedBytes, stream) kernel<<<grid, block, sharedBytes, stream>>>
#endif

namespace faircalib
{
namespace detail
{

// The block's dynamic shared memory (every extern __shared__ array aliases it).
template <typename T>
__device__ __forceinline__ T* dynamicShared()
{
#ifdef FAIRCALIB_EMULATE
    return reinterpret_cast<T*>(::faircalib_emu::dynamicShared());
#else
    extern __shared__ __align__(128) unsigned char faircalibDynamicShared[];
    return reinterpret_cast<T*>(faircalibDynamicShared);
#endif
}

template <typename T>
__device__ __forceinline__ float toFloat(T v);
template <>
__device__ __forceinline__ float toFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ float toFloat<__half>(__half v)
{
    return __half2float(v);
}
template <>
__device__ __forceinline__ float toFloat<__nv_bfloat16>(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

// Four signed nibbles (bits 0-15 of w) -> four sign-extended bytes. Each nibble v becomes
// (v ^ 8) - 8 computed per byte, which maps 0..7 to 0..7 and 8..15 to -8..-1.
__device__ __forceinline__ uint32_t nibblesToBytes(uint32_t w)
{
    uint32_t const spread = (w & 0xFu) | ((w & 0xF0u) << 4) | ((w & 0xF00u) << 8) | ((w & 0xF000u) << 12);
    return __vsub4(spread ^ 0x08080808u, 0x08080808u);
}

// Codes 0-3 and 4-7 of a packed word as int8x4.
__device__ __forceinline__ uint32_t unpackLo(uint32_t w)
{
    return nibblesToBytes(w);
}
__device__ __forceinline__ uint32_t unpackHi(uint32_t w)
{
    return nibblesToBytes(w >> 16);
}

// The GEMM epilogue, one rounding per operation and no contraction into FMA, so the host
// reference reproduces it bit for bit: (float(acc) * a_scale) * b_scale (+ bias).
__device__ __forceinline__ float rescale(int32_t acc, float aScale, float bScale, float const* bias, int32_t n)
{
    float y = __fmul_rn(__fmul_rn(__int2float_rn(acc), aScale), bScale);
    if (bias != nullptr)
    {
        y = __fadd_rn(y, bias[n]);
    }
    return y;
}

}  // namespace detail
}  // namespace faircalib
