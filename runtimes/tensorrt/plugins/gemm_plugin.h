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

    // The fields, in serialization order (see PluginBase in plugin_common.h).
    template <typename Visit>
    void forEachField(Visit&& visit) const
    {
        visit("in_features", inFeatures);
        visit("out_features", outFeatures);
        visit("has_bias", hasBias);
        visit("out_dtype", outDtype);
    }
    bool read(FieldReader const& fields, std::string& why);
    bool valid(std::string& why) const;
};

class GemmPlugin final : public PluginBase<GemmPlugin, GemmConfig>
{
public:
    static constexpr char const* kName = kGemmName;
    static constexpr int32_t kNbOutputs = 1;

    using PluginBase::PluginBase;

    int32_t nbInputs() const noexcept
    {
        return mConfig.hasBias ? 5 : 4;
    }

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
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

private:
    GemmPath mPath = GemmPath::kAuto;  // resolved on the first enqueue
    std::string mMetadata;
};

using GemmPluginCreator = PluginCreator<GemmPlugin>;

}  // namespace plugin
}  // namespace faircalib
