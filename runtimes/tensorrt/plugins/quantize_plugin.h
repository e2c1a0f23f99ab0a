// FaircalibW4A4Quantize: x (..., dim) -> int4 codes (..., words) int32 + scales (..., 1) fp32,
// fusing the site's online Kronecker transform and activation clip (kernels.h, Quantize).
//
// Inputs:  0 x      (..., dim) fp32 | fp16 | bf16
//          1 p1     (n1, n1) fp32          only when has_transform = 1
//          2 p2t    (n2, n2) fp32, P2^T    only when has_transform = 1
// Outputs: 0 codes  (..., packedWords(dim)) int32
//          1 scales (..., 1) fp32
// Fields:  dim, n1, n2, has_transform (int32), act_clip (float32)
#pragma once

#include "plugin_common.h"

namespace faircalib
{
namespace plugin
{

constexpr char const* kQuantizeName = "FaircalibW4A4Quantize";

struct QuantizeConfig
{
    int32_t dim = 0;
    int32_t n1 = 1;
    int32_t n2 = 0;
    int32_t hasTransform = 0;
    float actClip = 1.0F;

    bool valid(std::string& why) const;
};

class QuantizePlugin : public nvinfer1::IPluginV3,
                       public nvinfer1::IPluginV3OneCore,
                       public nvinfer1::IPluginV3OneBuild,
                       public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit QuantizePlugin(QuantizeConfig const& config);
    ~QuantizePlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t nbInputs() const
    {
        return mConfig.hasTransform ? 3 : 1;
    }

    QuantizeConfig mConfig;
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerial{};
};

class QuantizePluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    QuantizePluginCreator();
    ~QuantizePluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    FieldList mFields;
};

}  // namespace plugin
}  // namespace faircalib
