// FaircalibW4A4Gemm: int4 activation codes x int4 weight -> per-token x per-channel rescale
// (+ bias) -> fp32 / fp16 / bf16 (kernels.h, GEMM). The GEMM path (int4 MMA on sm_80/86/89,
// int8 MMA on sm_90+, dp4a below sm_80) is picked at run time from the device's compute
// capability; FAIRCALIB_GEMM_PATH=int4|int8|dp4a overrides it.
//
// Inputs:  0 codes   (..., words) int32      from FaircalibW4A4Quantize
//          1 scales  (..., 1) fp32
//          2 weight  (out_features, words) int32, packed int4 along in_features
//          3 wscale  (out_features,) fp32
//          4 bias    (out_features,) fp32     only when has_bias = 1
// Output:  0 y       (..., out_features) of out_dtype (0 fp32, 1 fp16, 2 bf16)
// Fields:  in_features, out_features, has_bias, out_dtype (int32)
#pragma once

#include "plugin_common.h"

namespace faircalib
{
namespace plugin
{

constexpr char const* kGemmName = "FaircalibW4A4Gemm";

struct GemmConfig
{
    int32_t inFeatures = 0;
    int32_t outFeatures = 0;
    int32_t hasBias = 0;
    int32_t outDtype = 0;

    bool valid(std::string& why) const;
};

class GemmPlugin : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit GemmPlugin(GemmConfig const& config);
    ~GemmPlugin() override = default;

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

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
    char const* getMetadataString() noexcept override;

    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t nbInputs() const
    {
        return mConfig.hasBias ? 5 : 4;
    }

    GemmConfig mConfig;
    GemmPath mPath = GemmPath::kAuto;  // resolved on the first enqueue
    std::string mMetadata;
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerial{};
};

class GemmPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    GemmPluginCreator();
    ~GemmPluginCreator() override = default;

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
