#include "quantize_plugin.h"

#include <exception>
#include <new>

namespace faircalib
{
namespace plugin
{

using namespace nvinfer1;

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

QuantizePlugin::QuantizePlugin(QuantizeConfig const& config)
    : mConfig(config)
{
}

IPluginCapability* QuantizePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* QuantizePlugin::clone() noexcept
{
    try
    {
        return new QuantizePlugin(mConfig);
    }
    catch (std::exception const& e)
    {
        logError(std::string(kQuantizeName) + ": clone failed: " + e.what());
    }
    return nullptr;
}

char const* QuantizePlugin::getPluginName() const noexcept
{
    return kQuantizeName;
}

char const* QuantizePlugin::getPluginVersion() const noexcept
{
    return kVersion;
}

char const* QuantizePlugin::getPluginNamespace() const noexcept
{
    return kNamespace;
}

int32_t QuantizePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != this->nbInputs() || nbOutputs != 2)
    {
        logError(std::string(kQuantizeName) + ": wrong number of inputs or outputs");
        return 1;
    }
    Dims const& d = in[0].desc.dims;
    if (d.nbDims < 1 || (d.d[d.nbDims - 1] != -1 && d.d[d.nbDims - 1] != mConfig.dim))
    {
        logError(std::string(kQuantizeName) + ": last input dimension must be dim = " + std::to_string(mConfig.dim));
        return 1;
    }
    (void) out;
    return 0;
}

int32_t QuantizePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    (void) inputTypes;
    (void) nbInputs;
    if (nbOutputs != 2)
    {
        return 1;
    }
    outputTypes[0] = DataType::kINT32;
    outputTypes[1] = DataType::kFLOAT;
    return 0;
}

int32_t QuantizePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
    int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    (void) shapeInputs;
    (void) nbShapeInputs;
    if (nbInputs != this->nbInputs() || nbOutputs != 2 || inputs[0].nbDims < 1)
    {
        return 1;
    }
    int32_t const rank = inputs[0].nbDims;
    for (int32_t o = 0; o < 2; ++o)
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
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    (void) nbOutputs;
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

int32_t QuantizePlugin::getNbOutputs() const noexcept
{
    return 2;
}

size_t QuantizePlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept
{
    (void) inputs;
    (void) nbInputs;
    (void) outputs;
    (void) nbOutputs;
    return 0;
}

int32_t QuantizePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    (void) out;
    if (nbInputs != this->nbInputs() || nbOutputs != 2)
    {
        return 1;
    }
    Dims const& d = in[0].dims;
    return d.nbDims >= 1 && d.d[d.nbDims - 1] == mConfig.dim ? 0 : 1;
}

int32_t QuantizePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    (void) outputDesc;
    (void) workspace;
    QuantizeParams p{};
    if (!kernelType(inputDesc[0].type, p.x_type))
    {
        logError(std::string(kQuantizeName) + ": unsupported input type");
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
        logError(std::string(kQuantizeName) + ": kernel launch failed: " + cudaGetErrorString(err));
        return 1;
    }
    return 0;
}

IPluginV3* QuantizePlugin::attachToContext(IPluginResourceContext* context) noexcept
{
    (void) context;
    return clone();
}

PluginFieldCollection const* QuantizePlugin::getFieldsToSerialize() noexcept
{
    mSerialFields.clear();
    mSerialFields.emplace_back("dim", &mConfig.dim, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back("n1", &mConfig.n1, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back("n2", &mConfig.n2, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back("has_transform", &mConfig.hasTransform, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back("act_clip", &mConfig.actClip, PluginFieldType::kFLOAT32, 1);
    mSerial.nbFields = static_cast<int32_t>(mSerialFields.size());
    mSerial.fields = mSerialFields.data();
    return &mSerial;
}

QuantizePluginCreator::QuantizePluginCreator()
{
    mFields.addInt("dim");
    mFields.addInt("n1");
    mFields.addInt("n2");
    mFields.addInt("has_transform");
    mFields.addFloat("act_clip");
}

char const* QuantizePluginCreator::getPluginName() const noexcept
{
    return kQuantizeName;
}

char const* QuantizePluginCreator::getPluginVersion() const noexcept
{
    return kVersion;
}

char const* QuantizePluginCreator::getPluginNamespace() const noexcept
{
    return kNamespace;
}

PluginFieldCollection const* QuantizePluginCreator::getFieldNames() noexcept
{
    return mFields.collection();
}

IPluginV3* QuantizePluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept
{
    (void) phase;
    try
    {
        FieldReader const r(fc);
        QuantizeConfig c;
        if (!r.getInt("dim", c.dim) || !r.getFloat("act_clip", c.actClip))
        {
            logError(std::string(kQuantizeName) + " " + (name ? name : "") + ": fields dim and act_clip are required");
            return nullptr;
        }
        r.getInt("has_transform", c.hasTransform);
        r.getInt("n1", c.n1);
        if (!r.getInt("n2", c.n2))
        {
            c.n2 = c.dim / (c.n1 > 0 ? c.n1 : 1);
        }
        std::string why;
        if (!c.valid(why))
        {
            logError(std::string(kQuantizeName) + " " + (name ? name : "") + ": " + why);
            return nullptr;
        }
        return new QuantizePlugin(c);
    }
    catch (std::exception const& e)
    {
        logError(std::string(kQuantizeName) + ": " + e.what());
    }
    return nullptr;
}

}  // namespace plugin
}  // namespace faircalib
