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

    // The fields, in serialization order (see PluginBase in plugin_common.h).
    template <typename Visit>
    void forEachField(Visit&& visit) const
    {
        visit("dim", dim);
        visit("n1", n1);
        visit("n2", n2);
        visit("has_transform", hasTransform);
        visit("act_clip", actClip);
    }
    bool read(FieldReader const& fields, std::string& why);
    bool valid(std::string& why) const;
};

class QuantizePlugin final : public PluginBase<QuantizePlugin, QuantizeConfig>
{
public:
    static constexpr char const* kName = kQuantizeName;
    static constexpr int32_t kNbOutputs = 2;

    using PluginBase::PluginBase;

    int32_t nbInputs() const noexcept
    {
        return mConfig.hasTransform ? 3 : 1;
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

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
};

using QuantizePluginCreator = PluginCreator<QuantizePlugin>;

}  // namespace plugin
}  // namespace faircalib
