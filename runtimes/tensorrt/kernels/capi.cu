// A C ABI over the kernels for ctypes callers (benchmarks/bench_gemm_trt.py) and anything
// else that is not C++. Pointers are device pointers; return values are cudaError_t codes.
#include "faircalib/kernels.h"

extern "C"
{

int faircalib_packed_words(int k)
{
    return faircalib::packedWords(k);
}

int faircalib_gemm_path_for_device(int device)
{
    return static_cast<int>(faircalib::pathForDevice(device));
}

int faircalib_gemm(void const* a, void const* aScale, void const* b, void const* bScale, void const* bias, void* out,
    int outType, long long m, int n, int kWords, int path, void* stream)
{
    faircalib::GemmParams p{};
    p.a = static_cast<int32_t const*>(a);
    p.a_scale = static_cast<float const*>(aScale);
    p.b = static_cast<int32_t const*>(b);
    p.b_scale = static_cast<float const*>(bScale);
    p.bias = static_cast<float const*>(bias);
    p.out = out;
    p.out_type = static_cast<faircalib::DType>(outType);
    p.m = m;
    p.n = n;
    p.k_words = kWords;
    return static_cast<int>(
        faircalib::launchGemm(p, static_cast<faircalib::GemmPath>(path), static_cast<cudaStream_t>(stream)));
}

int faircalib_quantize(void const* x, int xType, long long rows, int dim, int n1, int n2, void const* p1,
    void const* p2t, float clip, void* codes, void* scales, void* stream)
{
    faircalib::QuantizeParams p{};
    p.x = x;
    p.x_type = static_cast<faircalib::DType>(xType);
    p.rows = rows;
    p.dim = dim;
    p.n1 = n1;
    p.n2 = n2;
    p.p1 = static_cast<float const*>(p1);
    p.p2t = static_cast<float const*>(p2t);
    p.clip = clip;
    p.codes = static_cast<int32_t*>(codes);
    p.words = faircalib::packedWords(dim);
    p.scales = static_cast<float*>(scales);
    return static_cast<int>(faircalib::launchQuantize(p, static_cast<cudaStream_t>(stream)));
}

}  // extern "C"
