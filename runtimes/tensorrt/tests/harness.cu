// Standalone bit-exactness harness for the W4A4 kernels (no TensorRT needed).
//
// Every check compares GPU output with a host reference of the same arithmetic
// (kernels.h): integer dot products, the epilogue as separately rounded fp32 multiplies and
// adds, the transform as fmaf chains in ascending k, IEEE division and rintf. All comparisons
// are bit for bit; any difference is a failure. Build with -Xcompiler -ffp-contract=off so the
// host compiler does not fuse the reference's multiplies and adds.
//
//   faircalib_trt_harness [--quick | --small]   exit status 0 when every check passes
//     --quick: one of the real-size GEMMs; --small: none (the CPU emulator's default)
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "faircalib/kernels.h"

using faircalib::DType;
using faircalib::GemmPath;

namespace
{

int gPassed = 0;
int gFailed = 0;

#define CUDA_OK(call)                                                                                                  \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t const e_ = (call);                                                                                 \
        if (e_ != cudaSuccess)                                                                                         \
        {                                                                                                              \
            std::fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));             \
            std::exit(2);                                                                                              \
        }                                                                                                              \
    } while (0)

void report(bool ok, std::string const& what)
{
    (ok ? gPassed : gFailed) += 1;
    std::printf("%s  %s\n", ok ? "PASS" : "FAIL", what.c_str());
}

template <typename T>
struct DeviceBuffer
{
    T* ptr = nullptr;
    size_t count = 0;
    explicit DeviceBuffer(size_t n)
        : count(n)
    {
        CUDA_OK(cudaMalloc(&ptr, (n > 0 ? n : 1) * sizeof(T)));
    }
    DeviceBuffer(std::vector<T> const& host)
        : DeviceBuffer(host.size())
    {
        CUDA_OK(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
    ~DeviceBuffer()
    {
        cudaFree(ptr);
    }
    std::vector<T> download() const
    {
        std::vector<T> host(count);
        CUDA_OK(cudaMemcpy(host.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost));
        return host;
    }
    DeviceBuffer(DeviceBuffer const&) = delete;
    DeviceBuffer& operator=(DeviceBuffer const&) = delete;
};

// --- packing (kernels.h layout) ------------------------------------------------------------
std::vector<int32_t> pack(std::vector<int8_t> const& codes, int rows, int k)
{
    int const words = faircalib::packedWords(k);
    std::vector<int32_t> out(static_cast<size_t>(rows) * words, 0);
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < k; ++j)
        {
            uint32_t const nibble = static_cast<uint32_t>(codes[static_cast<size_t>(r) * k + j]) & 0xFu;
            uint32_t& w = reinterpret_cast<uint32_t&>(out[static_cast<size_t>(r) * words + j / 8]);
            w |= nibble << (4 * (j % 8));
        }
    return out;
}

int codeAt(std::vector<int32_t> const& packed, int words, int row, int k)
{
    uint32_t const w = static_cast<uint32_t>(packed[static_cast<size_t>(row) * words + k / 8]);
    int const v = static_cast<int>((w >> (4 * (k % 8))) & 0xFu);
    return v >= 8 ? v - 16 : v;
}

// --- output conversion, identical on host and device (cuda_fp16 / cuda_bf16 are host+device)
uint32_t bitsOf(float y, DType t)
{
    if (t == DType::kFloat16)
    {
        __half const h = __float2half_rn(y);
        uint16_t b;
        std::memcpy(&b, &h, 2);
        return b;
    }
    if (t == DType::kBFloat16)
    {
        __nv_bfloat16 const h = __float2bfloat16_rn(y);
        uint16_t b;
        std::memcpy(&b, &h, 2);
        return b;
    }
    uint32_t b;
    std::memcpy(&b, &y, 4);
    return b;
}

size_t elementSize(DType t)
{
    return t == DType::kFloat32 ? 4 : 2;
}

uint32_t storedBits(std::vector<unsigned char> const& raw, size_t i, DType t)
{
    if (t == DType::kFloat32)
    {
        uint32_t b;
        std::memcpy(&b, raw.data() + 4 * i, 4);
        return b;
    }
    uint16_t b;
    std::memcpy(&b, raw.data() + 2 * i, 2);
    return b;
}

char const* typeName(DType t)
{
    return t == DType::kFloat32 ? "fp32" : t == DType::kFloat16 ? "fp16" : "bf16";
}

// --- GEMM -------------------------------------------------------------------------------------
struct GemmCase
{
    int m, n, k;
};

void checkGemm(GemmCase const& c, std::vector<GemmPath> const& paths, std::vector<DType> const& outTypes,
    bool withBias, std::mt19937& rng)
{
    std::uniform_int_distribution<int> code(-8, 7);
    std::uniform_real_distribution<float> scale(1e-3f, 2e-2f);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<int8_t> a(static_cast<size_t>(c.m) * c.k), b(static_cast<size_t>(c.n) * c.k);
    for (auto& v : a)
        v = static_cast<int8_t>(code(rng));
    for (auto& v : b)
        v = static_cast<int8_t>(code(rng));
    if (c.m > 0 && c.k > 0)  // one extreme row: the largest possible magnitude
        for (int j = 0; j < c.k; ++j)
            a[j] = -8;
    if (c.n > 0 && c.k > 0)
        for (int j = 0; j < c.k; ++j)
            b[j] = -8;
    std::vector<float> aScale(c.m), bScale(c.n), bias(c.n);
    for (auto& v : aScale)
        v = scale(rng);
    for (auto& v : bScale)
        v = scale(rng);
    for (auto& v : bias)
        v = normal(rng);
    int const words = faircalib::packedWords(c.k);
    std::vector<int32_t> aPacked = pack(a, c.m, c.k), bPacked = pack(b, c.n, c.k);

    // host reference: exact int32 dot products, then the kernel's epilogue
    std::vector<float> ref(static_cast<size_t>(c.m) * c.n);
    for (int i = 0; i < c.m; ++i)
        for (int j = 0; j < c.n; ++j)
        {
            int32_t acc = 0;
            for (int k = 0; k < c.k; ++k)
                acc += static_cast<int32_t>(a[static_cast<size_t>(i) * c.k + k]) * b[static_cast<size_t>(j) * c.k + k];
            float y = static_cast<float>(acc) * aScale[i];
            y = y * bScale[j];
            if (withBias)
                y = y + bias[j];
            ref[static_cast<size_t>(i) * c.n + j] = y;
        }

    DeviceBuffer<int32_t> dA(aPacked), dB(bPacked);
    DeviceBuffer<float> dAs(aScale), dBs(bScale), dBias(bias);
    for (GemmPath path : paths)
        for (DType t : outTypes)
        {
            size_t const count = static_cast<size_t>(c.m) * c.n;
            DeviceBuffer<unsigned char> dOut(count * elementSize(t));
            CUDA_OK(cudaMemset(dOut.ptr, 0xFF, dOut.count));  // NaN-ish poison: unwritten outputs fail
            faircalib::GemmParams p{};
            p.a = dA.ptr;
            p.a_scale = dAs.ptr;
            p.b = dB.ptr;
            p.b_scale = dBs.ptr;
            p.bias = withBias ? dBias.ptr : nullptr;
            p.out = dOut.ptr;
            p.out_type = t;
            p.m = c.m;
            p.n = c.n;
            p.k_words = words;
            cudaError_t const err = faircalib::launchGemm(p, path, nullptr);
            cudaError_t const sync = cudaDeviceSynchronize();
            char name[160];
            std::snprintf(name, sizeof(name), "gemm %-8s m=%d n=%d k=%d %s%s", faircalib::pathName(path), c.m, c.n, c.k,
                typeName(t), withBias ? " +bias" : "");
            if (err != cudaSuccess || sync != cudaSuccess)
            {
                report(false, std::string(name) + " launch: " + cudaGetErrorString(err != cudaSuccess ? err : sync));
                continue;
            }
            std::vector<unsigned char> got = dOut.download();
            size_t bad = 0;
            size_t first = 0;
            for (size_t i = 0; i < count; ++i)
                if (storedBits(got, i, t) != bitsOf(ref[i], t) && bad++ == 0)
                    first = i;
            if (bad)
                std::printf("      %zu of %zu outputs differ; first at (%zu, %zu): ref %.9g\n", bad, count, first / c.n,
                    first % c.n, ref[first]);
            report(bad == 0, name);
        }
}

// --- quantize ---------------------------------------------------------------------------------
struct QuantCase
{
    int rows, n1, n2;
    bool transform;
    DType xType;
    float clip;
};

// Host reference of the quantize kernel; x is already the values the device reads (as float).
void quantizeRef(std::vector<float> const& x, QuantCase const& c, std::vector<float> const& p1,
    std::vector<float> const& p2t, std::vector<int32_t>& codes, std::vector<float>& scales)
{
    int const dim = c.n1 * c.n2;
    int const words = faircalib::packedWords(dim);
    codes.assign(static_cast<size_t>(c.rows) * words, 0);
    scales.assign(c.rows, 0.0f);
    std::vector<float> t(dim), y(dim);
    for (int r = 0; r < c.rows; ++r)
    {
        float const* xr = x.data() + static_cast<size_t>(r) * dim;
        if (c.transform)
        {
            for (int i = 0; i < c.n1; ++i)
                for (int j = 0; j < c.n2; ++j)
                {
                    float acc = 0.0f;
                    for (int k = 0; k < c.n1; ++k)
                        acc = std::fmaf(p1[static_cast<size_t>(i) * c.n1 + k], xr[k * c.n2 + j], acc);
                    t[i * c.n2 + j] = acc;
                }
            for (int i = 0; i < c.n1; ++i)
                for (int j = 0; j < c.n2; ++j)
                {
                    float acc = 0.0f;
                    for (int k = 0; k < c.n2; ++k)
                        acc = std::fmaf(t[i * c.n2 + k], p2t[static_cast<size_t>(k) * c.n2 + j], acc);
                    y[i * c.n2 + j] = acc;
                }
        }
        else
        {
            std::copy(xr, xr + dim, y.begin());
        }
        float absmax = 0.0f;
        for (float v : y)
            absmax = std::fmax(absmax, std::fabs(v));
        float const s = std::fmax(c.clip * absmax, faircalib::kScaleEps) / static_cast<float>(faircalib::kQMax);
        scales[r] = s;
        for (int k = 0; k < dim; ++k)
        {
            float q = std::rint(y[k] / s);
            q = std::fmin(std::fmax(q, -8.0f), 7.0f);
            uint32_t& w = reinterpret_cast<uint32_t&>(codes[static_cast<size_t>(r) * words + k / 8]);
            w |= (static_cast<uint32_t>(static_cast<int>(q)) & 0xFu) << (4 * (k % 8));
        }
    }
}

void checkQuantize(QuantCase const& c, std::mt19937& rng, bool tieRows)
{
    int const dim = c.n1 * c.n2;
    int const words = faircalib::packedWords(dim);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(c.rows) * dim);
    for (auto& v : x)
        v = normal(rng);
    if (c.rows > 1)  // an outlier channel, as in real activations
        for (int r = 0; r < c.rows; ++r)
            x[static_cast<size_t>(r) * dim + (r * 7) % dim] *= 40.0f;
    if (c.rows > 0)  // an all-zero row: scale = eps / 7, every code 0
        std::fill(x.begin(), x.begin() + dim, 0.0f);
    if (tieRows && c.rows > 1)  // exact halves: rint must round them to even
    {
        float const pattern[] = {7.0f, 3.5f, -3.5f, 0.5f, -0.5f, 2.5f, -2.5f, 1.5f, 6.5f, -6.5f};
        for (int k = 0; k < dim; ++k)
            x[static_cast<size_t>(dim) + k] = pattern[k % 10];
    }
    std::vector<float> p1(static_cast<size_t>(c.n1) * c.n1), p2t(static_cast<size_t>(c.n2) * c.n2);
    for (auto& v : p1)
        v = normal(rng) / std::sqrt(static_cast<float>(c.n1));
    for (auto& v : p2t)
        v = normal(rng) / std::sqrt(static_cast<float>(c.n2));

    // what the device reads: fp16 / bf16 inputs are rounded first
    std::vector<unsigned char> raw(x.size() * elementSize(c.xType));
    std::vector<float> seen(x.size());
    for (size_t i = 0; i < x.size(); ++i)
    {
        if (c.xType == DType::kFloat16)
        {
            __half const h = __float2half_rn(x[i]);
            std::memcpy(raw.data() + 2 * i, &h, 2);
            seen[i] = __half2float(h);
        }
        else if (c.xType == DType::kBFloat16)
        {
            __nv_bfloat16 const h = __float2bfloat16_rn(x[i]);
            std::memcpy(raw.data() + 2 * i, &h, 2);
            seen[i] = __bfloat162float(h);
        }
        else
        {
            std::memcpy(raw.data() + 4 * i, &x[i], 4);
            seen[i] = x[i];
        }
    }
    std::vector<int32_t> refCodes;
    std::vector<float> refScales;
    quantizeRef(seen, c, p1, p2t, refCodes, refScales);

    DeviceBuffer<unsigned char> dX(raw);
    DeviceBuffer<float> dP1(p1), dP2t(p2t), dScales(static_cast<size_t>(c.rows));
    DeviceBuffer<int32_t> dCodes(static_cast<size_t>(c.rows) * words);
    CUDA_OK(cudaMemset(dCodes.ptr, 0x5A, dCodes.count * 4));  // poison: padding must be written as 0
    faircalib::QuantizeParams p{};
    p.x = dX.ptr;
    p.x_type = c.xType;
    p.rows = c.rows;
    p.dim = dim;
    p.n1 = c.n1;
    p.n2 = c.n2;
    p.p1 = c.transform ? dP1.ptr : nullptr;
    p.p2t = c.transform ? dP2t.ptr : nullptr;
    p.clip = c.clip;
    p.codes = dCodes.ptr;
    p.words = words;
    p.scales = dScales.ptr;
    cudaError_t const err = faircalib::launchQuantize(p, nullptr);
    cudaError_t const sync = cudaDeviceSynchronize();
    char name[160];
    std::snprintf(name, sizeof(name), "quantize rows=%d dim=%d (%d x %d)%s %s clip=%.3f", c.rows, dim, c.n1, c.n2,
        c.transform ? " kron" : " identity", typeName(c.xType), c.clip);
    if (err != cudaSuccess || sync != cudaSuccess)
    {
        report(false, std::string(name) + " launch: " + cudaGetErrorString(err != cudaSuccess ? err : sync));
        return;
    }
    std::vector<int32_t> codes = dCodes.download();
    std::vector<float> scales = dScales.download();
    size_t badCodes = 0, badScales = 0;
    for (size_t i = 0; i < codes.size(); ++i)
        badCodes += codes[i] != refCodes[i];
    for (int r = 0; r < c.rows; ++r)
        badScales += std::memcmp(&scales[r], &refScales[r], 4) != 0;
    if (badCodes || badScales)
        std::printf("      %zu of %zu code words and %zu of %d scales differ\n", badCodes, codes.size(), badScales,
            c.rows);
    if (tieRows && c.rows > 1 && !c.transform && c.xType == DType::kFloat32 && c.clip == 1.0f)
    {
        // row 1 has absmax 7 -> scale 1: 3.5 -> 4, -3.5 -> -4, 0.5 -> 0, 2.5 -> 2, 1.5 -> 2, 6.5 -> 6
        int const expect[] = {7, 4, -4, 0, 0, 2, -2, 2, 6, -6};
        bool ties = true;
        for (int k = 0; k < 10 && k < dim; ++k)
            ties = ties && codeAt(codes, words, 1, k) == expect[k];
        report(ties, "quantize rounds exact halves to even");
    }
    report(badCodes == 0 && badScales == 0, name);
}

}  // namespace

int main(int argc, char** argv)
{
    bool const small = argc > 1 && std::strcmp(argv[1], "--small") == 0;
    bool const quick = small || (argc > 1 && std::strcmp(argv[1], "--quick") == 0);
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess)
    {
        std::printf("no CUDA device\n");
        return 3;
    }
    cudaDeviceProp prop{};
    CUDA_OK(cudaGetDeviceProperties(&prop, device));
    GemmPath const chosen = faircalib::pathForDevice(device);
    std::printf("device %s (sm_%d%d), GEMM path for this device: %s\n", prop.name, prop.major, prop.minor,
        faircalib::pathName(chosen));

    std::vector<GemmPath> paths{GemmPath::kDp4a};
    if (prop.major >= 8)
    {
        paths.push_back(GemmPath::kInt8Mma);
        paths.push_back(GemmPath::kInt4Mma);  // on sm_90 ptxas emulates it; still must be exact
    }
    std::vector<DType> const allTypes{DType::kFloat32, DType::kFloat16, DType::kBFloat16};
    std::mt19937 rng(1234);

    // odd tails in M and N, tiny K, the real LLaDA-8B / Dream-7B K and N
    std::vector<GemmCase> cases{{1, 1, 1}, {3, 5, 7}, {17, 33, 40}, {64, 128, 128}, {65, 129, 136}, {130, 257, 300},
        {200, 96, 1000}};
    std::vector<GemmCase> big{{19, 4096, 4096}, {7, 12288, 4096}, {5, 4096, 12288}, {3, 3584, 18944},
        {9, 18944, 3584}, {150, 4608, 3584}};
    for (auto const& c : cases)
    {
        checkGemm(c, paths, allTypes, false, rng);
        checkGemm(c, paths, {DType::kFloat32}, true, rng);
    }
    if (small)
        big.clear();
    for (auto const& c : (quick && !big.empty() ? std::vector<GemmCase>{big[0]} : big))
        checkGemm(c, paths, {DType::kFloat16}, true, rng);

    std::vector<QuantCase> qcases{{4, 1, 13, false, DType::kFloat32, 1.0f}, {5, 5, 8, true, DType::kFloat32, 0.9f},
        {33, 8, 17, true, DType::kFloat32, 1.0f}, {7, 64, 64, true, DType::kFloat32, 0.95f},
        {7, 64, 64, true, DType::kFloat16, 0.95f}, {3, 64, 64, true, DType::kBFloat16, 1.0f},
        {6, 56, 64, true, DType::kFloat32, 0.9f}, {3, 96, 128, true, DType::kFloat32, 0.85f},
        {2, 128, 148, true, DType::kFloat32, 0.9f}, {9, 64, 64, false, DType::kFloat32, 1.0f},
        {9, 64, 64, false, DType::kFloat32, 0.5f}};
    for (auto const& c : qcases)
        checkQuantize(c, rng, !c.transform);

    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
