#include "quantize_plugin.h"

namespace faircalib
{
namespace plugin
{

using namespace nvinfer1;

bool QuantizeConfig::read(FieldReader const& fields, std::string& why)
{
    if (!fields.getInt("dim", dim) || !fields.getFloat("act_clip", actClip))
    {
        why = "fields dim and act_clip are required";
        return false;
    }
    fields.getInt("has_transform", hasTransform);
    fields.getInt("n1", n1);
    if (!fields.getInt("n2", n2))
    {
        n2 = dim / (n1 > 0 ? n1 : 1);
    }
    return true;
}

bool QuantizeConfig::valid(std::string& why) const
{
    if (dim <= 0)
    {
        why = "dim must be positive";
        return false;
    }
    if (hasTransform != 0 && hasTransform != 1)
    {
        why = "has_transform must be 0 or 1";
        return false;
    }
    if (hasTransform && (n1 <= 0 || n2 <= 0 || static_cast<int64_t>(n1) * n2 != dim))
    {
        why = "n1 * n2 must equal dim";
        return false;
    }
    if (!(actClip > 0.0F))
    {
        why = "act_clip must be positive";
        return false;
    }
    if (quantizeSharedBytes(dim, n1, n2, hasTransform != 0) == 0)
    {
        why = "unsupported transform shape";
        return false;
    }
    return true;
}

int32_t QuantizePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!ioCountsMatch(nbInputs, nbOutputs))
    {
        reportError("wrong number of inputs or outputs");
        return 1;
    }
    Dims const& d = in[0].desc.dims;
    if (d.nbDims < 1 || (d.d[d.nbDims - 1] != -1 && d.d[d.nbDims - 1] != mConfig.dim))
    {
        reportError("last input dimension must be dim = " + std::to_string(mConfig.dim));
        return 1;
    }
    return 0;
}

int32_t QuantizePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* /*inputTypes*/, int32_t /*nbInputs*/) const noexcept
{
    if (nbOutputs != kNbOutputs)
    {
        return 1;
    }
    outputTypes[0] = DataType::kINT32;  // codes
    outputTypes[1] = DataType::kFLOAT;  // scales
    return 0;
}

int32_t QuantizePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (!ioCountsMatch(nbInputs, nbOutputs) || inputs[0].nbDims < 1)
    {
        return 1;
    }
    int32_t const rank = inputs[0].nbDims;
    for (int32_t o = 0; o < kNbOutputs; ++o)
    {
        outputs[o].nbDims = rank;
        for (int32_t i = 0; i + 1 < rank; ++i)
        {
            outputs[o].d[i] = inputs[0].d[i];
        }
    }
    outputs[0].d[rank - 1] = exprBuilder.constant(packedWords(mConfig.dim));
    outputs[1].d[rank - 1] = exprBuilder.constant(1);
    return 0;
}

bool QuantizePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t /*nbOutputs*/) noexcept
{
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return d.type == DataType::kFLOAT || d.type == DataType::kHALF || d.type == DataType::kBF16;
    }
    if (pos < nbInputs)  // p1, p2t
    {
        return d.type == DataType::kFLOAT;
    }
    return pos == nbInputs ? d.type == DataType::kINT32 : d.type == DataType::kFLOAT;
}

int32_t QuantizePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!ioCountsMatch(nbInputs, nbOutputs))
    {
        return 1;
    }
    Dims const& d = in[0].dims;
    return d.nbDims >= 1 && d.d[d.nbDims - 1] == mConfig.dim ? 0 : 1;
}

int32_t QuantizePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    QuantizeParams p{};
    if (!kernelType(inputDesc[0].type, p.x_type))
    {
        reportError("unsupported input type");
        return 1;
    }
    p.x = inputs[0];
    p.rows = leadingVolume(inputDesc[0].dims);
    p.dim = mConfig.dim;
    p.n1 = mConfig.hasTransform ? mConfig.n1 : 1;
    p.n2 = mConfig.hasTransform ? mConfig.n2 : mConfig.dim;
    p.p1 = mConfig.hasTransform ? static_cast<float const*>(inputs[1]) : nullptr;
    p.p2t = mConfig.hasTransform ? static_cast<float const*>(inputs[2]) : nullptr;
    p.clip = mConfig.actClip;
    p.codes = static_cast<int32_t*>(outputs[0]);
    p.words = packedWords(mConfig.dim);
    p.scales = static_cast<float*>(outputs[1]);
    cudaError_t const err = launchQuantize(p, stream);
    if (err != cudaSuccess)
    {
        reportError(std::string("kernel launch failed: ") + cudaGetErrorString(err));
        return 1;
    }
    return 0;
}

}  // namespace plugin
}  // namespace faircalib
