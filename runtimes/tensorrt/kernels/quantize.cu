// Per-token int4 activation quantization fused with the online Kronecker transform.
//
// One thread block owns one token row at a time (grid-stride over rows). The row is staged
// in shared memory as fp32 and transformed in place:
//   step 1  T = P1 X   columns are independent: 32 columns at a time go through a scratch
//                      tile, one warp per output row i, lanes over consecutive columns (P1[i, k]
//                      is a warp-uniform load, X[k, j] a conflict-free shared load);
//   step 2  Y = T P2^T rows are independent: a few rows at a time, threads over output
//                      columns j, reading P2 transposed so consecutive lanes load consecutive
//                      addresses.
// Every output is one FMA chain over ascending k starting from 0, so a host loop with fmaf
// reproduces it exactly. Then a block max-reduction gives the scale and each thread packs
// eight codes into one int32 word.
//
// Shared memory: dim floats for the row plus a scratch of max(32 * n1, n2 * rows_per_chunk)
// floats; LLaDA's down site (96 x 128) needs 64 KB, Dream's (128 x 148) 90 KB, both within
// the 99 KB opt-in limit of sm_86 / sm_89.
#include <cfloat>
#include <cmath>

#include "common.cuh"

namespace faircalib
{
namespace
{

constexpr int kThreads = 256;
constexpr int kColChunk = 32;          // columns per step-1 chunk (one per lane)
constexpr int kScratchTarget = 4096;   // floats in the step-2 scratch, at least one row

int scratchFloats(int32_t n1, int32_t n2)
{
    int const rowsPerChunk = n2 >= kScratchTarget ? 1 : kScratchTarget / n2;
    int const step2 = rowsPerChunk * n2;
    int const step1 = kColChunk * n1;
    return step1 > step2 ? step1 : step2;
}

__device__ __forceinline__ float blockMax(float v, float* red)
{
    for (int offset = 16; offset > 0; offset >>= 1)
    {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    int const warp = threadIdx.x >> 5;
    int const lane = threadIdx.x & 31;
    if (lane == 0)
    {
        red[warp] = v;
    }
    __syncthreads();
    if (warp == 0)
    {
        int const nWarps = blockDim.x >> 5;
        v = lane < nWarps ? red[lane] : 0.0f;
        for (int offset = 16; offset > 0; offset >>= 1)
        {
            v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
        }
        if (lane == 0)
        {
            red[0] = v;
        }
    }
    __syncthreads();
    float const result = red[0];
    __syncthreads();  // red is reused by the next row
    return result;
}

template <typename T, bool kTransform>
__global__ void __launch_bounds__(kThreads) quantizeKernel(QuantizeParams p, int scratch)
{
    float* const smem = detail::dynamicShared<float>();
    __shared__ float red[32];
    float* row = smem;              // (n1, n2) row-major
    float* tmp = smem + p.dim;      // scratch
    T const* x = static_cast<T const*>(p.x);
    int const tid = threadIdx.x;
    int const n1 = p.n1;
    int const n2 = p.n2;

    for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x)
    {
        T const* xr = x + r * p.dim;
        for (int k = tid; k < p.dim; k += blockDim.x)
        {
            row[k] = detail::toFloat<T>(xr[k]);
        }
        __syncthreads();

        if (kTransform)
        {
            // step 1: T = P1 X, kColChunk columns at a time
            for (int j0 = 0; j0 < n2; j0 += kColChunk)
            {
                int const cols = min(kColChunk, n2 - j0);
                for (int idx = tid; idx < n1 * kColChunk; idx += blockDim.x)
                {
                    int const i = idx / kColChunk;
                    int const jj = idx % kColChunk;
                    if (jj < cols)
                    {
                        float const* pRow = p.p1 + static_cast<int64_t>(i) * n1;
                        float acc = 0.0f;
                        for (int k = 0; k < n1; ++k)
                        {
                            acc = __fmaf_rn(__ldg(pRow + k), row[k * n2 + j0 + jj], acc);
                        }
                        tmp[idx] = acc;
                    }
                }
                __syncthreads();
                for (int idx = tid; idx < n1 * kColChunk; idx += blockDim.x)
                {
                    int const i = idx / kColChunk;
                    int const jj = idx % kColChunk;
                    if (jj < cols)
                    {
                        row[i * n2 + j0 + jj] = tmp[idx];
                    }
                }
                __syncthreads();
            }
            // step 2: Y = T P2^T, rowsPerChunk rows at a time
            int const rowsPerChunk = scratch / n2;
            for (int i0 = 0; i0 < n1; i0 += rowsPerChunk)
            {
                int const rowsHere = min(rowsPerChunk, n1 - i0);
                for (int idx = tid; idx < rowsHere * n2; idx += blockDim.x)
                {
                    int const ii = idx / n2;
                    int const j = idx % n2;
                    float const* tRow = row + (i0 + ii) * n2;
                    float acc = 0.0f;
                    for (int k = 0; k < n2; ++k)
                    {
                        acc = __fmaf_rn(tRow[k], __ldg(p.p2t + static_cast<int64_t>(k) * n2 + j), acc);
                    }
                    tmp[idx] = acc;
                }
                __syncthreads();
                for (int idx = tid; idx < rowsHere * n2; idx += blockDim.x)
                {
                    row[i0 * n2 + idx] = tmp[idx];
                }
                __syncthreads();
            }
        }

        float localMax = 0.0f;
        for (int k = tid; k < p.dim; k += blockDim.x)
        {
            localMax = fmaxf(localMax, fabsf(row[k]));
        }
        float const absmax = blockMax(localMax, red);
        // same operation order as the PyTorch reference: clamp(clip * absmax, eps) / qmax
        float const scale = __fdiv_rn(fmaxf(__fmul_rn(p.clip, absmax), kScaleEps), static_cast<float>(kQMax));
        if (tid == 0)
        {
            p.scales[r] = scale;
        }
        int32_t* out = p.codes + r * p.words;
        for (int w = tid; w < p.words; w += blockDim.x)
        {
            uint32_t word = 0;
#pragma unroll
            for (int e = 0; e < 8; ++e)
            {
                int const k = w * 8 + e;
                if (k < p.dim)
                {
                    float q = rintf(__fdiv_rn(row[k], scale));  // round half to even
                    q = fminf(fmaxf(q, -static_cast<float>(kQMax + 1)), static_cast<float>(kQMax));
                    word |= (static_cast<uint32_t>(__float2int_rn(q)) & 0xFu) << (4 * e);
                }
            }
            out[w] = static_cast<int32_t>(word);
        }
        __syncthreads();  // the row buffer is refilled for the next row
    }
}

template <typename T>
cudaError_t launchTyped(QuantizeParams const& p, cudaStream_t stream)
{
    bool const transform = p.p1 != nullptr;
    size_t const bytes = quantizeSharedBytes(p.dim, p.n1, p.n2, transform);
    if (bytes == 0)
    {
        return cudaErrorInvalidValue;
    }
    int device = 0;
    int optin = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess)
    {
        err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    }
    if (err != cudaSuccess)
    {
        return err;
    }
    if (bytes + 32 * sizeof(float) > static_cast<size_t>(optin))
    {
        return cudaErrorInvalidConfiguration;  // row + scratch do not fit in shared memory
    }
    auto kernel = transform ? quantizeKernel<T, true> : quantizeKernel<T, false>;
    if (bytes > 48 * 1024)
    {
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
        if (err != cudaSuccess)
        {
            return err;
        }
    }
    int64_t const maxGrid = int64_t{1} << 20;
    unsigned const grid = static_cast<unsigned>(p.rows < maxGrid ? p.rows : maxGrid);
    int const scratch = transform ? scratchFloats(p.n1, p.n2) : 0;
    FAIRCALIB_LAUNCH(kernel, grid, kThreads, bytes, stream)(p, scratch);
    return cudaGetLastError();
}

}  // namespace

size_t quantizeSharedBytes(int32_t dim, int32_t n1, int32_t n2, bool transform)
{
    if (dim <= 0)
    {
        return 0;
    }
    if (!transform)
    {
        return static_cast<size_t>(dim) * sizeof(float);
    }
    if (n1 <= 0 || n2 <= 0 || static_cast<int64_t>(n1) * n2 != dim)
    {
        return 0;
    }
    return (static_cast<size_t>(dim) + scratchFloats(n1, n2)) * sizeof(float);
}

cudaError_t launchQuantize(QuantizeParams const& p, cudaStream_t stream)
{
    if (p.rows < 0 || p.words != packedWords(p.dim) || (p.p1 == nullptr) != (p.p2t == nullptr))
    {
        return cudaErrorInvalidValue;
    }
    if (p.rows == 0)
    {
        return cudaSuccess;
    }
    switch (p.x_type)
    {
    case DType::kFloat32: return launchTyped<float>(p, stream);
    case DType::kFloat16: return launchTyped<__half>(p, stream);
    case DType::kBFloat16: return launchTyped<__nv_bfloat16>(p, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace faircalib
