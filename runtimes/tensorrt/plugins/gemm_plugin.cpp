#include "gemm_plugin.h"

namespace faircalib
{
namespace plugin
{

using namespace nvinfer1;

bool GemmConfig::read(FieldReader const& fields, std::string& why)
{
    if (!fields.getInt("in_features", inFeatures) || !fields.getInt("out_features", outFeatures))
    {
        why = "in_features and out_features are required";
        return false;
    }
    fields.getInt("has_bias", hasBias);
    fields.getInt("out_dtype", outDtype);
    return true;
}

bool GemmConfig::valid(std::string& why) const
{
    if (inFeatures <= 0 || outFeatures <= 0)
    {
        why = "in_features and out_features must be positive";
        return false;
    }
    if (hasBias != 0 && hasBias != 1)
    {
        why = "has_bias must be 0 or 1";
        return false;
    }
    DataType t;
    if (!outTypeFromField(outDtype, t))
    {
        why = "out_dtype must be 0 (fp32), 1 (fp16) or 2 (bf16)";
        return false;
    }
    return true;
}

int32_t GemmPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!ioCountsMatch(nbInputs, nbOutputs))
    {
        reportError("wrong number of inputs or outputs");
        return 1;
    }
    int64_t const words = packedWords(mConfig.inFeatures);
    Dims const& a = in[0].desc.dims;
    Dims const& w = in[2].desc.dims;
    if (a.nbDims < 1 || (a.d[a.nbDims - 1] != -1 && a.d[a.nbDims - 1] != words))
    {
        reportError("activation codes must have " + std::to_string(words) + " words per row");
        return 1;
    }
    if (w.nbDims != 2 || w.d[0] != mConfig.outFeatures || w.d[1] != words)
    {
        reportError("weight must be (out_features, " + std::to_string(words) + ") int32");
        return 1;
    }
    return 0;
}

int32_t GemmPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* /*inputTypes*/, int32_t /*nbInputs*/) const noexcept
{
    if (nbOutputs != kNbOutputs)
    {
        return 1;
    }
    return outTypeFromField(mConfig.outDtype, outputTypes[0]) ? 0 : 1;
}

int32_t GemmPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (!ioCountsMatch(nbInputs, nbOutputs) || inputs[0].nbDims < 1)
    {
        return 1;
    }
    int32_t const rank = inputs[0].nbDims;
    outputs[0].nbDims = rank;
    for (int32_t i = 0; i + 1 < rank; ++i)
    {
        outputs[0].d[i] = inputs[0].d[i];
    }
    outputs[0].d[rank - 1] = exprBuilder.constant(mConfig.outFeatures);
    return 0;
}

bool GemmPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t /*nbOutputs*/) noexcept
{
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0 || pos == 2)  // activation codes, weight codes
    {
        return d.type == DataType::kINT32;
    }
    if (pos < nbInputs)  // scales, weight scales, bias
    {
        return d.type == DataType::kFLOAT;
    }
    DataType out;
    return outTypeFromField(mConfig.outDtype, out) && d.type == out;
}

char const* GemmPlugin::getMetadataString() noexcept
{
    try
    {
        mMetadata = "in_features=" + std::to_string(mConfig.inFeatures) + " out_features="
            + std::to_string(mConfig.outFeatures) + " bias=" + std::to_string(mConfig.hasBias);
    }
    catch (std::exception const&)
    {
        mMetadata.clear();
    }
    return mMetadata.c_str();
}

int32_t GemmPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!ioCountsMatch(nbInputs, nbOutputs))
    {
        return 1;
    }
    Dims const& a = in[0].dims;
    return a.nbDims >= 1 && a.d[a.nbDims - 1] == packedWords(mConfig.inFeatures) ? 0 : 1;
}

int32_t GemmPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    GemmParams p{};
    if (!kernelType(outputDesc[0].type, p.out_type))
    {
        reportError("unsupported output type");
        return 1;
    }
    if (mPath == GemmPath::kAuto)
    {
        int device = 0;
        if (cudaGetDevice(&device) != cudaSuccess)
        {
            return 1;
        }
        mPath = pathForDevice(device);
    }
    p.a = static_cast<int32_t const*>(inputs[0]);
    p.a_scale = static_cast<float const*>(inputs[1]);
    p.b = static_cast<int32_t const*>(inputs[2]);
    p.b_scale = static_cast<float const*>(inputs[3]);
    p.bias = mConfig.hasBias ? static_cast<float const*>(inputs[4]) : nullptr;
    p.out = outputs[0];
    p.m = leadingVolume(inputDesc[0].dims);
    p.n = mConfig.outFeatures;
    p.k_words = packedWords(mConfig.inFeatures);
    cudaError_t const err = launchGemm(p, mPath, stream);
    if (err != cudaSuccess)
    {
        reportError(std::string("kernel launch failed (") + pathName(mPath) + "): " + cudaGetErrorString(err));
        return 1;
    }
    return 0;
}

}  // namespace plugin
}  // namespace faircalib
