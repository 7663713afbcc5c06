// Loads libreferdino_plugins.so the way TensorRT's loadLibrary does (dlopen + getCreators) and drives
// both plugins through their IPluginV3 interfaces: creator metadata, attributes, types, formats,
// configure, workspace, serialization, clone, error paths, and enqueue without a GPU (must fail cleanly);
// and, through setLoggerFinder, that the library's messages (the shim's errors and the Rust side's `log`
// records) reach the application's logger.
// Needs only TensorRT headers (virtual calls; nothing from libnvinfer is linked). Used by .ci/plugins.sh.
#include "NvInferRuntime.h"

#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <initializer_list>

using namespace nvinfer1;

static int gFailures = 0;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            ++gFailures;                                                         \
        }                                                                        \
    } while (0)

// The application's logger, as TensorRT's ILoggerFinder hands it to the library: keeps what it receives.
class CaptureLogger final : public ILogger {
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override {
        if (count < kMax) {
            severities[count] = severity;
            std::snprintf(texts[count], sizeof(texts[count]), "%s", msg);
            ++count;
        }
    }
    // Whether a message at `severity` containing `needle` arrived.
    bool saw(Severity severity, char const* needle) const {
        for (int32_t k = 0; k < count; ++k) {
            if (severities[k] == severity && std::strstr(texts[k], needle) != nullptr) return true;
        }
        return false;
    }
    static constexpr int32_t kMax = 64;
    Severity severities[kMax]{};
    char texts[kMax][512]{};
    int32_t count = 0;
};

class Finder final : public ILoggerFinder {
public:
    ILogger* findLogger() override { return &logger; }
    CaptureLogger logger;
};

static DynamicPluginTensorDesc desc(DataType t, std::initializer_list<int64_t> dims) {
    DynamicPluginTensorDesc d{};
    d.desc.type = t;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    int32_t k = 0;
    for (int64_t v : dims) d.desc.dims.d[k++] = v;
    d.min = d.max = d.opt = d.desc.dims;
    return d;
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s libreferdino_plugins.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
        std::fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    CHECK(getCreators != nullptr);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    CHECK(setLoggerFinder != nullptr);
    if (getCreators == nullptr || setLoggerFinder == nullptr) return 1;
    // loadLibrary's order: the logger finder first, then the creators.
    static Finder finder;
    setLoggerFinder(&finder);
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    CHECK(n == 2);
    IPluginCreatorV3One* msdaCreator = nullptr;
    IPluginCreatorV3One* pruneCreator = nullptr;
    for (int32_t k = 0; k < n; ++k) {
        CHECK(std::strcmp(creators[k]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
        auto* c = static_cast<IPluginCreatorV3One*>(creators[k]);
        CHECK(std::strcmp(c->getPluginVersion(), "1") == 0);
        CHECK(std::strcmp(c->getPluginNamespace(), "") == 0);
        if (std::strcmp(c->getPluginName(), "MSDeformAttn") == 0) msdaCreator = c;
        if (std::strcmp(c->getPluginName(), "QueryPrune") == 0) pruneCreator = c;
    }
    CHECK(msdaCreator != nullptr && pruneCreator != nullptr);
    if (msdaCreator == nullptr || pruneCreator == nullptr) return 1;
    CHECK(msdaCreator->getFieldNames()->nbFields == 0);
    PluginFieldCollection const* names = pruneCreator->getFieldNames();
    CHECK(names->nbFields == 1 && std::strcmp(names->fields[0].name, "keep") == 0 &&
          names->fields[0].type == PluginFieldType::kINT32);

    // ---- QueryPrune ----
    int32_t keep = 450;
    PluginField f("keep", &keep, PluginFieldType::kINT32, 1);
    PluginFieldCollection fc{1, &f};
    IPluginV3* prune = pruneCreator->createPlugin("prune0", &fc, TensorRTPhase::kBUILD);
    CHECK(prune != nullptr);
    if (prune == nullptr) return 1;
    auto* core = static_cast<IPluginV3OneCore*>(prune->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(prune->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* rt = static_cast<IPluginV3OneRuntime*>(prune->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(std::strcmp(core->getPluginName(), "QueryPrune") == 0);
    CHECK(build->getNbOutputs() == 2);
    DataType inTypes[2] = {DataType::kFLOAT, DataType::kFLOAT};
    DataType outTypes[2] = {};
    CHECK(build->getOutputDataTypes(outTypes, 2, inTypes, 2) == 0);
    CHECK(outTypes[0] == DataType::kINT64 && outTypes[1] == DataType::kFLOAT);
    DynamicPluginTensorDesc io[4] = {desc(DataType::kFLOAT, {1, 900, 256}), desc(DataType::kFLOAT, {1, 900, 900}),
                                     desc(DataType::kINT64, {1, 450}), desc(DataType::kFLOAT, {1, 900})};
    for (int32_t pos = 0; pos < 4; ++pos) CHECK(build->supportsFormatCombination(pos, io, 2, 2));
    DynamicPluginTensorDesc bad = io[2];
    bad.desc.type = DataType::kINT32;
    DynamicPluginTensorDesc ioBad[4] = {io[0], io[1], bad, io[3]};
    CHECK(!build->supportsFormatCombination(2, ioBad, 2, 2));
    CHECK(build->configurePlugin(io, 2, io + 2, 2) == 0);
    // The spread kernels' [B, 2, N] floats: 2 * 1 * 900 * 4 bytes.
    CHECK(build->getWorkspaceSize(io, 2, io + 2, 2) == 7200);
    PluginFieldCollection const* ser = rt->getFieldsToSerialize();
    CHECK(ser->nbFields == 1 && std::strcmp(ser->fields[0].name, "keep") == 0 &&
          *static_cast<int32_t const*>(ser->fields[0].data) == 450);
    // Deserialization path: the serialized fields recreate an equal plugin.
    IPluginV3* again = pruneCreator->createPlugin("prune0", ser, TensorRTPhase::kBUILD);
    CHECK(again != nullptr);
    IPluginV3* copy = prune->clone();
    CHECK(copy != nullptr);
    if (copy != nullptr) {
        auto* rt2 = static_cast<IPluginV3OneRuntime*>(copy->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        CHECK(*static_cast<int32_t const*>(rt2->getFieldsToSerialize()->fields[0].data) == 450);
    }
    // Errors: missing attribute, K > N. Each is reported to the application's logger.
    PluginFieldCollection empty{0, nullptr};
    CHECK(pruneCreator->createPlugin("bad", &empty, TensorRTPhase::kBUILD) == nullptr);
    CHECK(finder.logger.saw(ILogger::Severity::kERROR, "referdino-plugins: createPlugin"));
    // Runtime phase with no current CUDA context: the kernels cannot load (as when NVRTC or the driver is
    // missing); the Rust side's log::warn! must reach the logger, and the plugin is still created.
    IPluginV3* runtimePrune = pruneCreator->createPlugin("prune1", &fc, TensorRTPhase::kRUNTIME);
    CHECK(runtimePrune != nullptr);
    CHECK(finder.logger.saw(ILogger::Severity::kWARNING, "kernels not loaded at creation"));
    delete runtimePrune;
    DynamicPluginTensorDesc small[4] = {desc(DataType::kFLOAT, {1, 10, 4}), desc(DataType::kFLOAT, {1, 10, 10}),
                                        desc(DataType::kINT64, {1, 450}), desc(DataType::kFLOAT, {1, 10})};
    CHECK(build->configurePlugin(small, 2, small + 2, 2) != 0);
    // enqueue without a GPU (or with bogus pointers) must return an error, never crash.
    PluginTensorDesc in[2] = {io[0].desc, io[1].desc};
    PluginTensorDesc out[2] = {io[2].desc, io[3].desc};
    void const* inputs[2] = {nullptr, nullptr};
    void* outputs[2] = {nullptr, nullptr};
    CHECK(rt->enqueue(in, out, inputs, outputs, nullptr, nullptr) != 0);

    // ---- MSDeformAttn ----
    PluginFieldCollection none{0, nullptr};
    IPluginV3* msda = msdaCreator->createPlugin("msda0", &none, TensorRTPhase::kBUILD);
    CHECK(msda != nullptr);
    if (msda != nullptr) {
        auto* b = static_cast<IPluginV3OneBuild*>(msda->getCapabilityInterface(PluginCapabilityType::kBUILD));
        DataType mIn[5] = {DataType::kHALF, DataType::kINT64, DataType::kINT64, DataType::kFLOAT, DataType::kFLOAT};
        DataType mOut[1] = {};
        CHECK(b->getNbOutputs() == 1);
        CHECK(b->getOutputDataTypes(mOut, 1, mIn, 5) == 0 && mOut[0] == DataType::kHALF);
        DynamicPluginTensorDesc m[6] = {desc(DataType::kHALF, {1, 4795, 8, 32}), desc(DataType::kINT32, {4, 2}),
                                        desc(DataType::kINT32, {4}), desc(DataType::kFLOAT, {1, 900, 8, 4, 4, 2}),
                                        desc(DataType::kFLOAT, {1, 900, 8, 4, 4}), desc(DataType::kHALF, {1, 900, 256})};
        for (int32_t pos = 0; pos < 6; ++pos) CHECK(b->supportsFormatCombination(pos, m, 5, 1));
        CHECK(b->configurePlugin(m, 5, m + 5, 1) == 0);
        m[5].desc.dims.d[2] = 128;  // wrong output width
        CHECK(b->configurePlugin(m, 5, m + 5, 1) != 0);
        auto* r = static_cast<IPluginV3OneRuntime*>(msda->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        CHECK(r->getFieldsToSerialize()->nbFields == 0);
        delete msda;
    }
    delete prune;
    delete again;
    delete copy;
    if (gFailures == 0) std::printf("loader_smoke: all checks passed\n");
    return gFailures == 0 ? 0 : 1;
}
