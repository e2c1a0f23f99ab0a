// Drives one faircalib plugin through the calls TensorRT makes, without TensorRT: built with
// the plugin sources, TensorRT's public headers and the CPU emulator (emulator/Makefile,
// target `plugins`) into a library that tests/trt/emulated_plugins.py calls through ctypes.
//
// faircalib_plugin_run(op, fields, inputs..., outputs..., log):
//   getCreators -> the creator named op (version "1", namespace "") -> its advertised fields
//   must include every given field with that type -> createPlugin(kBUILD) -> the build
//   capability: getNbOutputs, getOutputDataTypes, getOutputShapes (constant expressions),
//   supportsFormatCombination (linear: yes, CHW4: no), configurePlugin, getWorkspaceSize ->
//   getFieldsToSerialize -> createPlugin(kRUNTIME) from those fields, as deserializing an
//   engine does -> attachToContext -> onShapeChange -> enqueue on emulated device buffers.
// Returns 0, or 1 with what failed (and the plugin's own error log) written to log.
#include <cstring>
#include <deque>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "NvInferRuntime.h"

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

namespace
{

using namespace nvinfer1;

class Logger : public ILogger
{
public:
    void log(Severity, char const* msg) noexcept override
    {
        text += msg;
        text += "\n";
    }
    std::string text;
};

class Finder : public ILoggerFinder
{
public:
    ILogger* findLogger() override
    {
        return &logger;
    }
    Logger logger;
};

// Dimension expressions over constants only: every shape here is concrete.
class ConstantExpr final : public IDimensionExpr
{
public:
    explicit ConstantExpr(int64_t value)
    {
        mValue.value = value;
        mImpl = &mValue;
    }

private:
    struct Value final : apiv::VDimensionExpr
    {
        int64_t value = 0;
        bool isConstant() const override
        {
            return true;
        }
        int64_t getConstantValue() const override
        {
            return value;
        }
        bool isSizeTensor() const override
        {
            return false;
        }
    } mValue;
};

class ConstantBuilder final : public IExprBuilder
{
public:
    ConstantBuilder()
    {
        mImpl = &mBuild;
    }
    IDimensionExpr const* make(int64_t v)
    {
        return mBuild.constant(v);
    }

private:
    struct Build final : apiv::VExprBuilder
    {
        std::deque<ConstantExpr> made;
        IDimensionExpr const* constant(int64_t value) override
        {
            return &made.emplace_back(value);
        }
        IDimensionExpr const* operation(
            DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
        {
            int64_t const x = a.getConstantValue();
            int64_t const y = b.getConstantValue();
            switch (op)
            {
            case DimensionOperation::kSUM: return constant(x + y);
            case DimensionOperation::kPROD: return constant(x * y);
            case DimensionOperation::kMAX: return constant(x > y ? x : y);
            case DimensionOperation::kMIN: return constant(x < y ? x : y);
            case DimensionOperation::kSUB: return constant(x - y);
            case DimensionOperation::kEQUAL: return constant(x == y);
            case DimensionOperation::kLESS: return constant(x < y);
            case DimensionOperation::kFLOOR_DIV: return constant(x / y);
            case DimensionOperation::kCEIL_DIV: return constant((x + y - 1) / y);
            }
            return nullptr;
        }
        IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
        {
            return nullptr;
        }
    } mBuild;
};

size_t elementSize(DataType t)
{
    switch (t)
    {
    case DataType::kHALF:
    case DataType::kBF16: return 2;
    case DataType::kINT8:
    case DataType::kBOOL:
    case DataType::kUINT8: return 1;
    default: return 4;
    }
}

// "name=i:40;other=f:0.9" -> PluginFields of kINT32 / kFLOAT32 (what TensorRT's ONNX
// parser makes of INT / FLOAT node attributes).
struct Fields
{
    std::deque<std::string> names;
    std::deque<int32_t> ints;
    std::deque<float> floats;
    std::vector<PluginField> fields;
    PluginFieldCollection collection{};

    explicit Fields(char const* spec)
    {
        std::stringstream all(spec);
        std::string item;
        while (std::getline(all, item, ';'))
        {
            size_t const eq = item.find('=');
            if (eq == std::string::npos || item.size() < eq + 3 || item[eq + 2] != ':')
                throw std::runtime_error("bad field spec '" + item + "'");
            names.push_back(item.substr(0, eq));
            std::string const value = item.substr(eq + 3);
            if (item[eq + 1] == 'i')
                fields.emplace_back(names.back().c_str(), &ints.emplace_back(std::stoi(value)), PluginFieldType::kINT32, 1);
            else
                fields.emplace_back(names.back().c_str(), &floats.emplace_back(std::stof(value)), PluginFieldType::kFLOAT32, 1);
        }
        collection.nbFields = static_cast<int32_t>(fields.size());
        collection.fields = fields.data();
    }
};

struct Tensor
{
    DataType type;
    Dims dims;
    size_t bytes;
};

std::vector<Tensor> tensors(int n, int const* types, int const* ranks, int64_t const* dims)
{
    std::vector<Tensor> out(n);
    for (int i = 0; i < n; ++i)
    {
        out[i].type = static_cast<DataType>(types[i]);
        out[i].dims.nbDims = ranks[i];
        size_t count = 1;
        for (int j = 0; j < ranks[i]; ++j)
        {
            out[i].dims.d[j] = dims[i * Dims::MAX_DIMS + j];
            count *= static_cast<size_t>(out[i].dims.d[j]);
        }
        out[i].bytes = count * elementSize(out[i].type);
    }
    return out;
}

void expect(bool ok, std::string const& what)
{
    if (!ok)
        throw std::runtime_error(what);
}

template <typename T>
T* capability(IPluginV3* plugin, PluginCapabilityType type, char const* kind)
{
    auto* cap = static_cast<T*>(plugin->getCapabilityInterface(type));
    expect(cap != nullptr && std::strcmp(cap->getInterfaceInfo().kind, kind) == 0,
        std::string("capability ") + kind + " missing");
    return cap;
}

struct DeviceBuffers
{
    std::vector<void*> ptrs;
    void* add(size_t bytes, void const* host)
    {
        void* p = nullptr;
        expect(cudaMalloc(&p, bytes > 0 ? bytes : 1) == cudaSuccess, "cudaMalloc");
        ptrs.push_back(p);
        if (host != nullptr)
            cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
        return p;
    }
    ~DeviceBuffers()
    {
        for (void* p : ptrs)
            cudaFree(p);
    }
};

void run(char const* op, char const* fieldSpec, std::vector<Tensor> const& in, void const* const* inHost,
    std::vector<Tensor> const& out, void* const* outHost)
{
    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    IPluginCreatorV3One* creator = nullptr;
    for (int32_t i = 0; i < nbCreators; ++i)
    {
        expect(std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0,
            "a creator is not an IPluginCreatorV3One");
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(c->getPluginName(), op) == 0 && std::strcmp(c->getPluginVersion(), "1") == 0
            && std::strcmp(c->getPluginNamespace(), "") == 0)
            creator = c;
    }
    expect(creator != nullptr, std::string("no creator ") + op + " version 1 in namespace \"\"");

    Fields const fields(fieldSpec);
    PluginFieldCollection const* advertised = creator->getFieldNames();
    for (PluginField const& f : fields.fields)
    {
        bool found = false;
        for (int32_t i = 0; i < advertised->nbFields; ++i)
            found = found || (std::strcmp(advertised->fields[i].name, f.name) == 0 && advertised->fields[i].type == f.type);
        expect(found, std::string("field ") + f.name + " is not advertised with that type");
    }

    std::unique_ptr<IPluginV3> built(creator->createPlugin("driver", &fields.collection, TensorRTPhase::kBUILD));
    expect(built != nullptr, "createPlugin (build phase) refused the fields");
    auto* core = capability<IPluginV3OneCore>(built.get(), PluginCapabilityType::kCORE, "PLUGIN_V3ONE_CORE");
    auto* build = capability<IPluginV3OneBuild>(built.get(), PluginCapabilityType::kBUILD, "PLUGIN_V3ONE_BUILD");
    expect(std::strcmp(core->getPluginName(), op) == 0 && std::strcmp(core->getPluginVersion(), "1") == 0,
        "plugin name / version differ from the creator's");

    int const nIn = static_cast<int>(in.size());
    int const nOut = static_cast<int>(out.size());
    expect(build->getNbOutputs() == nOut, "getNbOutputs");
    std::vector<DataType> inTypes(nIn), outTypes(nOut);
    for (int i = 0; i < nIn; ++i)
        inTypes[i] = in[i].type;
    expect(build->getOutputDataTypes(outTypes.data(), nOut, inTypes.data(), nIn) == 0, "getOutputDataTypes failed");
    for (int i = 0; i < nOut; ++i)
        expect(outTypes[i] == out[i].type, "getOutputDataTypes: output " + std::to_string(i) + " has another type");

    ConstantBuilder exprs;
    std::vector<DimsExprs> inExprs(nIn), outExprs(nOut);
    for (int i = 0; i < nIn; ++i)
    {
        inExprs[i].nbDims = in[i].dims.nbDims;
        for (int j = 0; j < in[i].dims.nbDims; ++j)
            inExprs[i].d[j] = exprs.make(in[i].dims.d[j]);
    }
    expect(build->getOutputShapes(inExprs.data(), nIn, nullptr, 0, outExprs.data(), nOut, exprs) == 0,
        "getOutputShapes failed");
    for (int i = 0; i < nOut; ++i)
    {
        bool same = outExprs[i].nbDims == out[i].dims.nbDims;
        for (int j = 0; same && j < out[i].dims.nbDims; ++j)
            same = outExprs[i].d[j] != nullptr && outExprs[i].d[j]->getConstantValue() == out[i].dims.d[j];
        expect(same, "getOutputShapes: output " + std::to_string(i) + " has another shape");
    }

    std::vector<DynamicPluginTensorDesc> io(nIn + nOut);
    for (int i = 0; i < nIn + nOut; ++i)
    {
        Tensor const& t = i < nIn ? in[i] : out[i - nIn];
        io[i].desc = PluginTensorDesc{t.dims, t.type, TensorFormat::kLINEAR, 1.0F};
        io[i].min = io[i].max = io[i].opt = t.dims;
    }
    for (int pos = 0; pos < nIn + nOut; ++pos)
    {
        expect(build->supportsFormatCombination(pos, io.data(), nIn, nOut),
            "supportsFormatCombination refuses linear position " + std::to_string(pos));
        io[pos].desc.format = TensorFormat::kCHW4;
        expect(!build->supportsFormatCombination(pos, io.data(), nIn, nOut),
            "supportsFormatCombination accepts CHW4 at position " + std::to_string(pos));
        io[pos].desc.format = TensorFormat::kLINEAR;
    }
    expect(build->configurePlugin(io.data(), nIn, io.data() + nIn, nOut) == 0, "configurePlugin failed");
    size_t const workspace = build->getWorkspaceSize(io.data(), nIn, io.data() + nIn, nOut);

    // an engine stores getFieldsToSerialize() and recreates the plugin from it at load time
    auto* builtRuntime
        = capability<IPluginV3OneRuntime>(built.get(), PluginCapabilityType::kRUNTIME, "PLUGIN_V3ONE_RUNTIME");
    std::unique_ptr<IPluginV3> loaded(
        creator->createPlugin("driver", builtRuntime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
    expect(loaded != nullptr, "createPlugin (runtime phase) refused the serialized fields");
    auto* loadedRuntime
        = capability<IPluginV3OneRuntime>(loaded.get(), PluginCapabilityType::kRUNTIME, "PLUGIN_V3ONE_RUNTIME");
    std::unique_ptr<IPluginV3> attached(loadedRuntime->attachToContext(nullptr));
    expect(attached != nullptr, "attachToContext");
    auto* runtime
        = capability<IPluginV3OneRuntime>(attached.get(), PluginCapabilityType::kRUNTIME, "PLUGIN_V3ONE_RUNTIME");

    std::vector<PluginTensorDesc> inDesc(nIn), outDesc(nOut);
    for (int i = 0; i < nIn; ++i)
        inDesc[i] = io[i].desc;
    for (int i = 0; i < nOut; ++i)
        outDesc[i] = io[nIn + i].desc;
    expect(runtime->onShapeChange(inDesc.data(), nIn, outDesc.data(), nOut) == 0, "onShapeChange failed");

    DeviceBuffers device;
    std::vector<void const*> inPtrs(nIn);
    std::vector<void*> outPtrs(nOut);
    for (int i = 0; i < nIn; ++i)
        inPtrs[i] = device.add(in[i].bytes, inHost[i]);
    for (int i = 0; i < nOut; ++i)
    {
        outPtrs[i] = device.add(out[i].bytes, nullptr);
        cudaMemset(outPtrs[i], 0xFF, out[i].bytes);  // poison: unwritten outputs show
    }
    void* work = workspace > 0 ? device.add(workspace, nullptr) : nullptr;
    expect(runtime->enqueue(inDesc.data(), outDesc.data(), inPtrs.data(), outPtrs.data(), work, nullptr) == 0,
        "enqueue failed");
    expect(cudaDeviceSynchronize() == cudaSuccess, "cudaDeviceSynchronize");
    for (int i = 0; i < nOut; ++i)
        cudaMemcpy(outHost[i], outPtrs[i], out[i].bytes, cudaMemcpyDeviceToHost);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int faircalib_plugin_run(char const* op, char const* fields,
    int nbInputs, int const* inTypes, int const* inRanks, int64_t const* inDims, void const* const* inHost,
    int nbOutputs, int const* outTypes, int const* outRanks, int64_t const* outDims, void* const* outHost, char* log,
    int logSize)
{
    static Finder finder;
    setLoggerFinder(&finder);
    finder.logger.text.clear();
    std::string message;
    try
    {
        run(op, fields, tensors(nbInputs, inTypes, inRanks, inDims), inHost,
            tensors(nbOutputs, outTypes, outRanks, outDims), outHost);
    }
    catch (std::exception const& e)
    {
        message = std::string(e.what()) + "\n" + finder.logger.text;
    }
    if (log != nullptr && logSize > 0)
    {
        std::strncpy(log, message.c_str(), static_cast<size_t>(logSize) - 1);
        log[logSize - 1] = '\0';
    }
    return message.empty() ? 0 : 1;
}
