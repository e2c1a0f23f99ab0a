// Shared pieces of the faircalib IPluginV3 plugins: logging through the library's logger
// finder, reading creator fields, the data-type mapping to the kernels, and the IPluginV3
// boilerplate both plugins need (PluginBase, PluginCreator), so that a plugin's own files
// hold only its fields, its shape and type rules and its enqueue.
#pragma once

#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <type_traits>
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

// "<plugin>: <what>" to TensorRT's logger. Never throws: a message that cannot be built
// (out of memory) is dropped, so it is safe in the plugins' noexcept entry points.
inline void logPluginError(char const* plugin, std::string const& what) noexcept
{
    try
    {
        logError(std::string(plugin) + ": " + what);
    }
    catch (...)
    {
    }
}

// The PluginFieldType of a C++ field type: the plugins' fields are int32 (ONNX INT
// attributes) or float32 (ONNX FLOAT attributes). Any other type does not compile.
template <typename T>
struct FieldTypeOf;
template <>
struct FieldTypeOf<int32_t>
{
    static constexpr nvinfer1::PluginFieldType value = nvinfer1::PluginFieldType::kINT32;
};
template <>
struct FieldTypeOf<float>
{
    static constexpr nvinfer1::PluginFieldType value = nvinfer1::PluginFieldType::kFLOAT32;
};
template <typename T>
constexpr nvinfer1::PluginFieldType kFieldType = FieldTypeOf<std::decay_t<T>>::value;

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

// A PluginFieldCollection over fields it owns the descriptors of: the creator's advertised
// list (names and types, no data) or a plugin's serialized fields (pointing into its config).
// The collection stays valid until the next add() or clear().
class FieldList
{
public:
    // One scalar field; its type follows T (FieldTypeOf), data may be null.
    template <typename T>
    void add(char const* name, T const* data = nullptr)
    {
        mFields.emplace_back(name, data, kFieldType<T>, 1);
        refresh();
    }
    void clear()
    {
        mFields.clear();
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

// ---------------------------------------------------------------------------------------
// IPluginV3 boilerplate.
//
// A plugin is `class P final : public PluginBase<P, PConfig>` with
//   static constexpr char const* kName;        creator and plugin name (the ONNX op type)
//   static constexpr int32_t kNbOutputs;       getNbOutputs()
//   int32_t nbInputs() const;                  inputs for this config (optional ones)
// and the shape / type / format rules, configurePlugin, onShapeChange and enqueue.
// Its config is a copyable struct with
//   template <typename Visit> void forEachField(Visit&& visit) const;
//       visit(name, member) for every field, in serialization order; the member's type
//       (int32_t or float) is the field's type. This one list drives the creator's
//       advertised fields and getFieldsToSerialize().
//   bool read(FieldReader const& fields, std::string& why);
//       the config from a creator's fields (node attributes or a serialized engine);
//       false with why when a required field is missing.
//   bool valid(std::string& why) const;
// and its creator is PluginCreator<P>.
// ---------------------------------------------------------------------------------------

// The capabilities a V3 plugin implements (core, build, runtime) and what is the same in
// every faircalib plugin: capability lookup, clone, name / version / namespace, output
// count, no workspace, attachToContext (the plugins hold no per-context resources) and the
// serialized fields. Derived is the plugin class (CRTP), Config its fields.
template <typename Derived, typename Config>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    using ConfigType = Config;

    explicit PluginBase(Config const& config)
        : mConfig(config)
    {
    }
    ~PluginBase() override = default;

    // Not copyable or movable: the serialized fields point into mConfig. clone() copies.
    PluginBase(PluginBase const&) = delete;
    PluginBase& operator=(PluginBase const&) = delete;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    // A fresh plugin with the same config; state resolved at run time (e.g. the GEMM path)
    // is resolved again by the copy.
    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            return new Derived(mConfig);
        }
        catch (std::exception const& e)
        {
            reportError(std::string("clone failed: ") + e.what());
        }
        return nullptr;
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override
    {
        return Derived::kName;
    }
    char const* getPluginVersion() const noexcept override
    {
        return kVersion;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return kNamespace;
    }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override
    {
        return Derived::kNbOutputs;
    }
    // The kernels need no scratch memory; a plugin that does overrides this.
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
        nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override
    {
        return 0;
    }

    // IPluginV3OneRuntime
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept override
    {
        return clone();
    }
    // The config's fields, in forEachField order, pointing into this plugin's config. The
    // creator's read() takes them back when an engine is deserialized.
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        try
        {
            mSerial.clear();
            mConfig.forEachField([this](char const* name, auto const& value) { mSerial.add(name, &value); });
            return mSerial.collection();
        }
        catch (std::exception const& e)
        {
            reportError(std::string("serializing the fields failed: ") + e.what());
        }
        return nullptr;
    }

protected:
    // Whether TensorRT's input / output counts are this plugin's.
    bool ioCountsMatch(int32_t nbInputs, int32_t nbOutputs) const noexcept
    {
        return nbInputs == static_cast<Derived const*>(this)->nbInputs() && nbOutputs == Derived::kNbOutputs;
    }

    // "<plugin name>: <what>" to TensorRT's logger.
    static void reportError(std::string const& what) noexcept
    {
        logPluginError(Derived::kName, what);
    }

    Config const mConfig;

private:
    FieldList mSerial;
};

// The IPluginCreatorV3One of a PluginBase plugin: advertises the config's fields and makes
// the plugin from a field collection (the ONNX node's attributes when building, the
// serialized fields when an engine is loaded: both phases read the same fields).
template <typename Plugin>
class PluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    using Config = typename Plugin::ConfigType;

    PluginCreator()
    {
        Config const defaults{};
        defaults.forEachField([this](char const* name, auto const& value) {
            mFields.add<std::decay_t<decltype(value)>>(name);
        });
    }
    ~PluginCreator() override = default;

    char const* getPluginName() const noexcept override
    {
        return Plugin::kName;
    }
    char const* getPluginVersion() const noexcept override
    {
        return kVersion;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return kNamespace;
    }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return mFields.collection();
    }

    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase /*phase*/) noexcept override
    {
        try
        {
            Config config{};
            std::string why;
            if (!config.read(FieldReader(fc), why) || !config.valid(why))
            {
                // "<plugin> <layer>: <why>"
                logError(std::string(Plugin::kName) + " " + (name != nullptr ? name : "") + ": " + why);
                return nullptr;
            }
            return new Plugin(config);
        }
        catch (std::exception const& e)
        {
            logPluginError(Plugin::kName, e.what());
        }
        return nullptr;
    }

private:
    FieldList mFields;
};

}  // namespace plugin
}  // namespace faircalib
