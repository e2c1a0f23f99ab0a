// Shared pieces of the faircalib IPluginV3 plugins: logging through the library's logger
// finder, reading creator fields, and the data-type mapping to the kernels.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "NvInferRuntime.h"
#include "faircalib/kernels.h"

namespace faircalib
{
namespace plugin
{

constexpr char const* kVersion = "1";
constexpr char const* kNamespace = "";  // the ONNX parser's default plugin_namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
void logError(std::string const& message) noexcept;

// Fields of a PluginFieldCollection by name, with type checks. The ONNX parser hands INT
// attributes over as kINT32 and FLOAT attributes as kFLOAT32.
class FieldReader
{
public:
    explicit FieldReader(nvinfer1::PluginFieldCollection const* fc)
        : mFc(fc)
    {
    }

    bool getInt(char const* name, int32_t& out) const
    {
        nvinfer1::PluginField const* f = find(name);
        if (f == nullptr || f->length < 1 || f->data == nullptr)
        {
            return false;
        }
        if (f->type == nvinfer1::PluginFieldType::kINT32)
        {
            out = *static_cast<int32_t const*>(f->data);
            return true;
        }
        if (f->type == nvinfer1::PluginFieldType::kINT64)
        {
            out = static_cast<int32_t>(*static_cast<int64_t const*>(f->data));
            return true;
        }
        return false;
    }

    bool getFloat(char const* name, float& out) const
    {
        nvinfer1::PluginField const* f = find(name);
        if (f == nullptr || f->length < 1 || f->data == nullptr)
        {
            return false;
        }
        if (f->type == nvinfer1::PluginFieldType::kFLOAT32)
        {
            out = *static_cast<float const*>(f->data);
            return true;
        }
        if (f->type == nvinfer1::PluginFieldType::kFLOAT64)
        {
            out = static_cast<float>(*static_cast<double const*>(f->data));
            return true;
        }
        return false;
    }

private:
    nvinfer1::PluginField const* find(char const* name) const
    {
        if (mFc == nullptr)
        {
            return nullptr;
        }
        for (int32_t i = 0; i < mFc->nbFields; ++i)
        {
            if (mFc->fields[i].name != nullptr && std::strcmp(mFc->fields[i].name, name) == 0)
            {
                return &mFc->fields[i];
            }
        }
        return nullptr;
    }

    nvinfer1::PluginFieldCollection const* mFc;
};

// The creator's advertised field list (names and types; no data).
class FieldList
{
public:
    void addInt(char const* name)
    {
        mFields.emplace_back(name, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
        refresh();
    }
    void addFloat(char const* name)
    {
        mFields.emplace_back(name, nullptr, nvinfer1::PluginFieldType::kFLOAT32, 1);
        refresh();
    }
    nvinfer1::PluginFieldCollection const* collection() const
    {
        return &mCollection;
    }

private:
    void refresh()
    {
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
    }
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

inline bool kernelType(nvinfer1::DataType t, DType& out)
{
    switch (t)
    {
    case nvinfer1::DataType::kFLOAT: out = DType::kFloat32; return true;
    case nvinfer1::DataType::kHALF: out = DType::kFloat16; return true;
    case nvinfer1::DataType::kBF16: out = DType::kBFloat16; return true;
    default: return false;
    }
}

// out_dtype field values
inline bool outTypeFromField(int32_t v, nvinfer1::DataType& out)
{
    switch (v)
    {
    case 0: out = nvinfer1::DataType::kFLOAT; return true;
    case 1: out = nvinfer1::DataType::kHALF; return true;
    case 2: out = nvinfer1::DataType::kBF16; return true;
    default: return false;
    }
}

// Rows of a (..., last) tensor.
inline int64_t leadingVolume(nvinfer1::Dims const& d)
{
    int64_t v = 1;
    for (int32_t i = 0; i + 1 < d.nbDims; ++i)
    {
        v *= d.d[i];
    }
    return v;
}

}  // namespace plugin
}  // namespace faircalib
