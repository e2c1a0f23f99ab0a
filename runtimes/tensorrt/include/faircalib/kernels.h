// W4A4 kernels of the faircalib TensorRT plugins: the contract shared by the plugins, the
// standalone harness and the Python reference (faircalib_export/trt/reference.py).
//
// Packed int4 layout ("words"): a row of K signed 4-bit codes is stored as
// words(K) = ceil(K / kKAlign) * kKAlign / 8 int32 words. Code k lives in word k / 8 at bits
// 4 * (k % 8) .. 4 * (k % 8) + 3 (two's complement), i.e. the byte order of
// faircalib_export/fold/pack.py (code 2j in the low nibble of byte j) read as little-endian
// int32. Codes k >= K are zero, so padded columns add nothing to a dot product and the GEMM
// never needs a K tail.
//
// Quantize (one call per transform site):
//   x' = P1 · X · P2^T   on each row x (dim = n1 * n2) viewed as X (n1, n2), fp32 FMA chains in
//                        ascending k (T = P1 X first, then T P2^T); skipped without a transform
//   s  = max(clip * max|x'|, 1e-8) / 7                      (fp32, correctly rounded ops)
//   q  = clamp(rint(x' / s), -8, 7)                          (IEEE division, half to even)
//   codes[row] = packed q, scales[row] = s
//
// GEMM (one call per fused group of linears):
//   acc[m, n] = sum_k a[m, k] * b[n, k]                       (exact int32)
//   out[m, n] = (float(acc) * a_scale[m]) * b_scale[n] (+ bias[n]), rounded to the output type
// b is the weight (N, K) packed along K ("col" operand of mma.row.col).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace faircalib
{

constexpr int kKAlign = 128;  // codes per packed row are padded to a multiple of this
constexpr int kQMax = 7;      // int4 symmetric grid [-8, 7], scale maps max|x| to 7
constexpr float kScaleEps = 1e-8f;

inline int packedWords(int k)
{
    return (k + kKAlign - 1) / kKAlign * (kKAlign / 8);
}

enum class DType : int32_t
{
    kFloat32 = 0,
    kFloat16 = 1,
    kBFloat16 = 2,
};

struct QuantizeParams
{
    void const* x;        // (rows, dim) of x_type, row-major
    DType x_type;
    int64_t rows;
    int32_t dim;          // n1 * n2
    int32_t n1;
    int32_t n2;
    float const* p1;      // (n1, n1) row-major, or nullptr for no transform
    float const* p2t;     // (n2, n2) = P2 transposed (p2t[k * n2 + j] = P2[j, k]), or nullptr
    float clip;           // activation clip ratio of the site
    int32_t* codes;       // (rows, words) packed int4
    int32_t words;        // packedWords(dim)
    float* scales;        // (rows,) per-token scales
};

// Bytes of dynamic shared memory one quantize block needs (0 when the shape is unsupported).
size_t quantizeSharedBytes(int32_t dim, int32_t n1, int32_t n2, bool transform);
cudaError_t launchQuantize(QuantizeParams const& p, cudaStream_t stream);

enum class GemmPath : int32_t
{
    kAuto = 0,     // pick by compute capability (pathForDevice)
    kInt4Mma = 1,  // mma.sync m16n8k64 s4 (sm_80, sm_86, sm_89)
    kInt8Mma = 2,  // int4 unpacked to int8, mma.sync m16n8k32 s8 (sm_80+; the sm_90 path)
    kDp4a = 3,     // one thread per output, dp4a (any sm_61+; reference and fallback)
};

struct GemmParams
{
    int32_t const* a;       // (m, k_words) activation codes
    float const* a_scale;   // (m,)
    int32_t const* b;       // (n, k_words) weight codes
    float const* b_scale;   // (n,)
    float const* bias;      // (n,) or nullptr
    void* out;              // (m, n) of out_type
    DType out_type;
    int64_t m;
    int32_t n;
    int32_t k_words;        // packedWords(K); a multiple of kKAlign / 8
};

// The path a device runs: int4 MMA on compute capability 8.x, the int8 MMA path on 9.0 and
// newer (Hopper has no int4 tensor-core MMA), dp4a below 8.0.
GemmPath pathForDevice(int device);
GemmPath pathForCapability(int major, int minor);
char const* pathName(GemmPath path);
cudaError_t launchGemm(GemmParams const& p, GemmPath path, cudaStream_t stream);

}  // namespace faircalib
