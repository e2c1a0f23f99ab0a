#include "gemm_plugin.h"

#include <exception>

namespace faircalib
{
namespace plugin
{

using namespace nvinfer1;

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

GemmPlugin::GemmPlugin(GemmConfig const& config)
    : mConfig(config)
{
}

IPluginCapability* GemmPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* GemmPlugin::clone() noexcept
{
    try
    {
        return new GemmPlugin(mConfig);
    }
    catch (std::exception const& e)
    {
        logError(std::string(kGemmName) + ": clone failed: " + e.what());
    }
    return nullptr;
}

char const* GemmPlugin::getPluginName() const noexcept
{
    return kGemmName;
}

char const* GemmPlugin::getPluginVersion() const noexcept
{
    return kVersion;
}

char const* GemmPlugin::getPluginNamespace() const noexcept
{
    return kNamespace;
}

int32_t GemmPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    (void) out;
    if (nbInputs != this->nbInputs() || nbOutputs != 1)
    {
        logError(std::string(kGemmName) + ": wrong number of inputs or outputs");
        return 1;
    }
    int64_t const words = packedWords(mConfig.inFeatures);
    Dims const& a = in[0].desc.dims;
    Dims const& w = in[2].desc.dims;
    if (a.nbDims < 1 || (a.d[a.nbDims - 1] != -1 && a.d[a.nbDims - 1] != words))
    {
        logError(std::string(kGemmName) + ": activation codes must have " + std::to_string(words) + " words per row");
        return 1;
    }
    if (w.nbDims != 2 || w.d[0] != mConfig.outFeatures || w.d[1] != words)
    {
        logError(std::string(kGemmName) + ": weight must be (out_features, " + std::to_string(words) + ") int32");
        return 1;
    }
    return 0;
}

int32_t GemmPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    (void) inputTypes;
    (void) nbInputs;
    if (nbOutputs != 1)
    {
        return 1;
    }
    return outTypeFromField(mConfig.outDtype, outputTypes[0]) ? 0 : 1;
}

int32_t GemmPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
    int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    (void) shapeInputs;
    (void) nbShapeInputs;
    if (nbInputs != this->nbInputs() || nbOutputs != 1 || inputs[0].nbDims < 1)
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
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    (void) nbOutputs;
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

int32_t GemmPlugin::getNbOutputs() const noexcept
{
    return 1;
}

size_t GemmPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept
{
    (void) inputs;
    (void) nbInputs;
    (void) outputs;
    (void) nbOutputs;
    return 0;
}

char const* GemmPlugin::getMetadataString() noexcept
{
    mMetadata = "in_features=" + std::to_string(mConfig.inFeatures) + " out_features="
        + std::to_string(mConfig.outFeatures) + " bias=" + std::to_string(mConfig.hasBias);
    return mMetadata.c_str();
}

int32_t GemmPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    (void) out;
    if (nbInputs != this->nbInputs() || nbOutputs != 1)
    {
        return 1;
    }
    Dims const& a = in[0].dims;
    return a.nbDims >= 1 && a.d[a.nbDims - 1] == packedWords(mConfig.inFeatures) ? 0 : 1;
}

int32_t GemmPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    (void) workspace;
    GemmParams p{};
    if (!kernelType(outputDesc[0].type, p.out_type))
    {
        logError(std::string(kGemmName) + ": unsupported output type");
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
        logError(std::string(kGemmName) + ": kernel launch failed (" + pathName(mPath) + "): " + cudaGetErrorString(err));
        return 1;
    }
    return 0;
}

IPluginV3* GemmPlugin::attachToContext(IPluginResourceContext* context) noexcept
{
    (void) context;
    return clone();
}

PluginFieldCollection const* GemmPlugin::getFieldsToSerialize() noexcept
{
    mSerialFields.clear();
    mSerialFields.emplace_back("in_features", &mConfig.inFeatures, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back("out_features", &mConfig.outFeatures, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back("has_bias", &mConfig.hasBias, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back("out_dtype", &mConfig.outDtype, PluginFieldType::kINT32, 1);
    mSerial.nbFields = static_cast<int32_t>(mSerialFields.size());
    mSerial.fields = mSerialFields.data();
    return &mSerial;
}

GemmPluginCreator::GemmPluginCreator()
{
    mFields.addInt("in_features");
    mFields.addInt("out_features");
    mFields.addInt("has_bias");
    mFields.addInt("out_dtype");
}

char const* GemmPluginCreator::getPluginName() const noexcept
{
    return kGemmName;
}

char const* GemmPluginCreator::getPluginVersion() const noexcept
{
    return kVersion;
}

char const* GemmPluginCreator::getPluginNamespace() const noexcept
{
    return kNamespace;
}

PluginFieldCollection const* GemmPluginCreator::getFieldNames() noexcept
{
    return mFields.collection();
}

IPluginV3* GemmPluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept
{
    (void) phase;
    try
    {
        FieldReader const r(fc);
        GemmConfig c;
        if (!r.getInt("in_features", c.inFeatures) || !r.getInt("out_features", c.outFeatures))
        {
            logError(std::string(kGemmName) + " " + (name ? name : "") + ": in_features and out_features are required");
            return nullptr;
        }
        r.getInt("has_bias", c.hasBias);
        r.getInt("out_dtype", c.outDtype);
        std::string why;
        if (!c.valid(why))
        {
            logError(std::string(kGemmName) + " " + (name ? name : "") + ": " + why);
            return nullptr;
        }
        return new GemmPlugin(c);
    }
    catch (std::exception const& e)
    {
        logError(std::string(kGemmName) + ": " + e.what());
    }
    return nullptr;
}

}  // namespace plugin
}  // namespace faircalib
