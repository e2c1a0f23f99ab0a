// W4A4 GEMM: int4 activation codes x int4 weight codes -> int32 -> per-token x per-channel
// rescale -> fp32 / fp16 / bf16.
//
// Tensor-core kernel (paths kInt4Mma and kInt8Mma share everything but the inner MMA):
//   block tile BM x BN, K in steps of 128 codes (64 bytes per row), STAGES-deep cp.async
//   pipeline; warps own 64 x 32 sub-tiles = 4 x 4 MMA tiles of m16 x n8.
//   Shared memory rows are 64 bytes = four 16-byte chunks; chunk c of row r is stored at
//   c ^ ((r >> 1) & 3), so the eight row addresses of every ldmatrix phase hit eight distinct
//   16-byte bank groups.
//   Fragments come from ldmatrix.x4: for mma.m16n8k64.s4 a thread holds, per 64-code step,
//   32-bit words tig and tig + 4 of rows g and g + 8 of A and of column g of B
//   (g = lane / 4, tig = lane % 4), exactly the words an 8 x 8 b16 ldmatrix tile hands out.
//   kInt8Mma (Hopper has no int4 MMA) unpacks each word into two int8x4 words and issues two
//   mma.m16n8k32.s8: slot k of the int8 MMA carries the same original code in A and in B, so
//   the dot product is the same exact integer.
//   M and N tails: out-of-range rows are zero-filled by cp.async (src-size 0) and skipped in
//   the epilogue. K has no tail: rows are padded to kKAlign codes with zeros (kernels.h).
//
// dp4a kernel: one thread per output, the plain reference and the fallback below sm_80.
#include <cstdlib>
#include <cstring>

#include "common.cuh"

namespace faircalib
{
namespace
{

constexpr int kStages = 3;
constexpr int kRowBytes = 64;        // 128 int4 codes per row per K step
constexpr int kWordsPerStep = kRowBytes / 4;

__device__ __forceinline__ uint32_t smemAddress(void const* p)
{
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; src_bytes = 0 writes zeros (rows past M or N).
__device__ __forceinline__ void cpAsync16(uint32_t dst, void const* src, int srcBytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(srcBytes));
#elif defined(FAIRCALIB_EMULATE)
    ::faircalib_emu::cpAsync16(dst, src, srcBytes);
#endif
}

__device__ __forceinline__ void cpAsyncCommit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#elif defined(FAIRCALIB_EMULATE)
    ::faircalib_emu::cpAsyncCommit();
#endif
}

template <int kPending>
__device__ __forceinline__ void cpAsyncWait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#elif defined(FAIRCALIB_EMULATE)
    ::faircalib_emu::cpAsyncWait(kPending);
#endif
}

__device__ __forceinline__ void ldmatrixX4(uint32_t (&r)[4], uint32_t addr)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#elif defined(FAIRCALIB_EMULATE)
    ::faircalib_emu::ldmatrixX4(r, addr);
#endif
}

__device__ __forceinline__ void mmaS4(int32_t (&c)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(FAIRCALIB_EMULATE)
    ::faircalib_emu::mmaS4(c, a, b0, b1);
#endif
}

__device__ __forceinline__ void mmaS8(
    int32_t (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#elif defined(FAIRCALIB_EMULATE)
    ::faircalib_emu::mmaS8(c, a0, a1, a2, a3, b0, b1);
#endif
}

__device__ __forceinline__ int swizzle(int row, int chunk)
{
    return row * kRowBytes + ((chunk ^ ((row >> 1) & 3)) << 4);
}

template <int BM, int BN>
__host__ __device__ constexpr int stageBytes()
{
    return (BM + BN) * kRowBytes;
}

template <int BM, int BN, int WARPS_M, int WARPS_N, bool kInt8, typename OutT>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32) gemmMmaKernel(GemmParams p)
{
    constexpr int kThreads = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M;
    constexpr int WN = BN / WARPS_N;
    constexpr int MT = WM / 16;
    constexpr int NT = WN / 8;
    static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must hold whole m16 x n16 pieces");

    unsigned char* const smem = detail::dynamicShared<unsigned char>();
    int const tid = threadIdx.x;
    int const lane = tid & 31;
    int const warp = tid >> 5;
    int const warpM = warp / WARPS_N;
    int const warpN = warp % WARPS_N;
    int64_t const m0 = static_cast<int64_t>(blockIdx.x) * BM;
    int const n0 = blockIdx.y * BN;
    int64_t const rowStride = static_cast<int64_t>(p.k_words) * 4;  // bytes
    char const* aBase = reinterpret_cast<char const*>(p.a);
    char const* bBase = reinterpret_cast<char const*>(p.b);
    int const kSteps = p.k_words / kWordsPerStep;

    auto loadStage = [&](int stage, int kStep) {
        unsigned char* sA = smem + stage * stageBytes<BM, BN>();
        unsigned char* sB = sA + BM * kRowBytes;
        int64_t const kOffset = static_cast<int64_t>(kStep) * kRowBytes;
        for (int c = tid; c < BM * 4; c += kThreads)
        {
            int const r = c >> 2;
            int const chunk = c & 3;
            bool const inside = m0 + r < p.m;
            char const* src = aBase + (inside ? (m0 + r) * rowStride + kOffset + chunk * 16 : 0);
            cpAsync16(smemAddress(sA + swizzle(r, chunk)), src, inside ? 16 : 0);
        }
        for (int c = tid; c < BN * 4; c += kThreads)
        {
            int const r = c >> 2;
            int const chunk = c & 3;
            bool const inside = n0 + r < p.n;
            char const* src = bBase + (inside ? (n0 + r) * rowStride + kOffset + chunk * 16 : 0);
            cpAsync16(smemAddress(sB + swizzle(r, chunk)), src, inside ? 16 : 0);
        }
    };

    int32_t acc[MT][NT][4];
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int ni = 0; ni < NT; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                acc[mi][ni][e] = 0;

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s)
    {
        if (s < kSteps)
        {
            loadStage(s, s);
        }
        cpAsyncCommit();
    }

    for (int kt = 0; kt < kSteps; ++kt)
    {
        cpAsyncWait<kStages - 2>();
        __syncthreads();
        int const next = kt + kStages - 1;
        if (next < kSteps)
        {
            loadStage(next % kStages, next);  // the stage read in iteration kt - 1
        }
        cpAsyncCommit();

        unsigned char const* sA = smem + (kt % kStages) * stageBytes<BM, BN>();
        unsigned char const* sB = sA + BM * kRowBytes;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk)  // two 64-code MMA steps per 128-code stage
        {
            uint32_t af[MT][4];
            uint32_t bf[NT][2];
#pragma unroll
            for (int mi = 0; mi < MT; ++mi)
            {
                // matrices: rows 0-7 / 8-15 of chunk 2kk, then of chunk 2kk + 1 -> a0..a3
                int const r = warpM * WM + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                int const chunk = 2 * kk + (lane >> 4);
                ldmatrixX4(af[mi], smemAddress(sA + swizzle(r, chunk)));
            }
#pragma unroll
            for (int nj = 0; nj < NT / 2; ++nj)
            {
                // matrices: n-rows 0-7 chunk 2kk, 0-7 chunk 2kk+1, 8-15 chunk 2kk, 8-15 chunk 2kk+1
                int const r = warpN * WN + nj * 16 + (lane & 7) + (lane >> 4) * 8;
                int const chunk = 2 * kk + ((lane >> 3) & 1);
                uint32_t t[4];
                ldmatrixX4(t, smemAddress(sB + swizzle(r, chunk)));
                bf[2 * nj][0] = t[0];
                bf[2 * nj][1] = t[1];
                bf[2 * nj + 1][0] = t[2];
                bf[2 * nj + 1][1] = t[3];
            }
#pragma unroll
            for (int mi = 0; mi < MT; ++mi)
            {
#pragma unroll
                for (int ni = 0; ni < NT; ++ni)
                {
                    if (kInt8)
                    {
                        uint32_t const* a = af[mi];
                        mmaS8(acc[mi][ni], detail::unpackLo(a[0]), detail::unpackLo(a[1]), detail::unpackHi(a[0]),
                            detail::unpackHi(a[1]), detail::unpackLo(bf[ni][0]), detail::unpackHi(bf[ni][0]));
                        mmaS8(acc[mi][ni], detail::unpackLo(a[2]), detail::unpackLo(a[3]), detail::unpackHi(a[2]),
                            detail::unpackHi(a[3]), detail::unpackLo(bf[ni][1]), detail::unpackHi(bf[ni][1]));
                    }
                    else
                    {
                        mmaS4(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
                    }
                }
            }
        }
    }
    cpAsyncWait<0>();

    // epilogue: c0, c1 at (g, 2 tig + {0, 1}), c2, c3 at (g + 8, 2 tig + {0, 1})
    int const g = lane >> 2;
    int const tig = lane & 3;
    OutT* out = static_cast<OutT*>(p.out);
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
    {
#pragma unroll
        for (int half = 0; half < 2; ++half)
        {
            int64_t const m = m0 + warpM * WM + mi * 16 + g + 8 * half;
            if (m >= p.m)
            {
                continue;
            }
            float const aScale = p.a_scale[m];
#pragma unroll
            for (int ni = 0; ni < NT; ++ni)
            {
#pragma unroll
                for (int e = 0; e < 2; ++e)
                {
                    int const n = n0 + warpN * WN + ni * 8 + 2 * tig + e;
                    if (n < p.n)
                    {
                        float const y = detail::rescale(acc[mi][ni][2 * half + e], aScale, p.b_scale[n], p.bias, n);
                        out[m * p.n + n] = detail::fromFloat<OutT>(y);
                    }
                }
            }
        }
    }
}

template <typename OutT>
__global__ void gemmDp4aKernel(GemmParams p)
{
    int const n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= p.n)
    {
        return;
    }
    uint32_t const* b = reinterpret_cast<uint32_t const*>(p.b) + static_cast<int64_t>(n) * p.k_words;
    for (int64_t m = blockIdx.y; m < p.m; m += gridDim.y)
    {
        uint32_t const* a = reinterpret_cast<uint32_t const*>(p.a) + m * p.k_words;
        int32_t acc = 0;
        for (int w = 0; w < p.k_words; ++w)
        {
            uint32_t const aw = a[w];
            uint32_t const bw = b[w];
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610) || defined(FAIRCALIB_EMULATE)
            acc = __dp4a(static_cast<int>(detail::unpackLo(aw)), static_cast<int>(detail::unpackLo(bw)), acc);
            acc = __dp4a(static_cast<int>(detail::unpackHi(aw)), static_cast<int>(detail::unpackHi(bw)), acc);
#else
            for (int e = 0; e < 8; ++e)
            {
                int const x = static_cast<int>(aw << (28 - 4 * e)) >> 28;
                int const y = static_cast<int>(bw << (28 - 4 * e)) >> 28;
                acc += x * y;
            }
#endif
        }
        static_cast<OutT*>(p.out)[m * p.n + n] = detail::fromFloat<OutT>(detail::rescale(acc, p.a_scale[m], p.b_scale[n], p.bias, n));
    }
}

template <int BM, int BN, int WARPS_M, int WARPS_N, bool kInt8, typename OutT>
cudaError_t launchMma(GemmParams const& p, cudaStream_t stream)
{
    constexpr int kBytes = kStages * stageBytes<BM, BN>();
    static_assert(kBytes <= 48 * 1024, "the default dynamic shared memory limit needs no opt-in");
    dim3 const grid(static_cast<unsigned>((p.m + BM - 1) / BM), static_cast<unsigned>((p.n + BN - 1) / BN));
    auto const kernel = gemmMmaKernel<BM, BN, WARPS_M, WARPS_N, kInt8, OutT>;
    FAIRCALIB_LAUNCH(kernel, grid, WARPS_M * WARPS_N * 32, kBytes, stream)(p);
    return cudaGetLastError();
}

template <bool kInt8, typename OutT>
cudaError_t launchMmaSized(GemmParams const& p, cudaStream_t stream)
{
    if (p.m <= 64)  // decode-sized token counts: fewer idle rows per block
    {
        return launchMma<64, 128, 1, 4, kInt8, OutT>(p, stream);
    }
    return launchMma<128, 128, 2, 4, kInt8, OutT>(p, stream);
}

template <typename OutT>
cudaError_t launchPath(GemmParams const& p, GemmPath path, cudaStream_t stream)
{
    switch (path)
    {
    case GemmPath::kInt4Mma: return launchMmaSized<false, OutT>(p, stream);
    case GemmPath::kInt8Mma: return launchMmaSized<true, OutT>(p, stream);
    case GemmPath::kDp4a:
    {
        int64_t const maxRows = 65535;
        dim3 const grid(static_cast<unsigned>((p.n + 127) / 128), static_cast<unsigned>(p.m < maxRows ? p.m : maxRows));
        auto const kernel = gemmDp4aKernel<OutT>;
        FAIRCALIB_LAUNCH(kernel, grid, 128, 0, stream)(p);
        return cudaGetLastError();
    }
    case GemmPath::kAuto: break;
    }
    return cudaErrorInvalidValue;
}

}  // namespace

GemmPath pathForCapability(int major, int minor)
{
    (void) minor;
    if (major == 8)
    {
        return GemmPath::kInt4Mma;
    }
    if (major >= 9)
    {
        return GemmPath::kInt8Mma;
    }
    return GemmPath::kDp4a;
}

GemmPath pathForDevice(int device)
{
    // FAIRCALIB_GEMM_PATH=int4|int8|dp4a forces a path (debugging, A/B timing)
    if (char const* forced = std::getenv("FAIRCALIB_GEMM_PATH"))
    {
        if (std::strcmp(forced, "int4") == 0)
            return GemmPath::kInt4Mma;
        if (std::strcmp(forced, "int8") == 0)
            return GemmPath::kInt8Mma;
        if (std::strcmp(forced, "dp4a") == 0)
            return GemmPath::kDp4a;
    }
    int major = 0;
    int minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess
        || cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
    {
        return GemmPath::kDp4a;
    }
    return pathForCapability(major, minor);
}

char const* pathName(GemmPath path)
{
    switch (path)
    {
    case GemmPath::kAuto: return "auto";
    case GemmPath::kInt4Mma: return "int4-mma";
    case GemmPath::kInt8Mma: return "int8-mma";
    case GemmPath::kDp4a: return "dp4a";
    }
    return "unknown";
}

cudaError_t launchGemm(GemmParams const& p, GemmPath path, cudaStream_t stream)
{
    if (p.m < 0 || p.n <= 0 || p.k_words <= 0 || p.k_words % kWordsPerStep != 0)
    {
        return cudaErrorInvalidValue;
    }
    if (p.m == 0)
    {
        return cudaSuccess;
    }
    int device = 0;
    cudaError_t const err = cudaGetDevice(&device);
    if (err != cudaSuccess)
    {
        return err;
    }
    if (path == GemmPath::kAuto)
    {
        path = pathForDevice(device);
    }
    if (path == GemmPath::kInt4Mma || path == GemmPath::kInt8Mma)
    {
        int major = 0;
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess || major < 8)
        {
            return cudaErrorInvalidDeviceFunction;  // cp.async / ldmatrix / mma.sync need sm_80
        }
    }
    switch (p.out_type)
    {
    case DType::kFloat32: return launchPath<float>(p, path, stream);
    case DType::kFloat16: return launchPath<__half>(p, path, stream);
    case DType::kBFloat16: return launchPath<__nv_bfloat16>(p, path, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace faircalib
