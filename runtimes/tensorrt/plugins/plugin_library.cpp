// Entry points of libfaircalib_trt_plugins.so for IPluginRegistry::loadLibrary (Python:
// trt.get_plugin_registry().load_library(path); trtexec: --dynamicPlugins=path):
//   setLoggerFinder(ILoggerFinder*)              TensorRT hands over its logger
//   getCreators(int32_t& n) -> creator array     the V3 plugin creators of this library
// The library links no TensorRT library: it only implements TensorRT's interfaces.
#include <mutex>

#include "gemm_plugin.h"
#include "quantize_plugin.h"

namespace faircalib
{
namespace plugin
{
namespace
{

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder = nullptr;

}  // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    gLoggerFinder = finder;
}

void logError(std::string const& message) noexcept
{
    try
    {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        if (gLoggerFinder != nullptr)
        {
            if (nvinfer1::ILogger* logger = gLoggerFinder->findLogger())
            {
                logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
            }
        }
    }
    catch (...)
    {
    }
}

}  // namespace plugin
}  // namespace faircalib

// TENSORRTAPI expands to nothing outside TensorRT's own build in TensorRT 11, and the library
// is built with hidden visibility, so the entry points carry their own export attribute.
#define FAIRCALIB_EXPORT extern "C" __attribute__((visibility("default")))

FAIRCALIB_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    faircalib::plugin::setLoggerFinder(finder);
}

FAIRCALIB_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static faircalib::plugin::QuantizePluginCreator quantizeCreator;
    static faircalib::plugin::GemmPluginCreator gemmCreator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&quantizeCreator, &gemmCreator};
    nbCreators = 2;
    return creators;
}
