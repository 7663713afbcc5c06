// Thin TensorRT shim: IPluginV3 (core/build/runtime) and IPluginCreatorV3One classes whose every method
// forwards to the Rust plugin logic through rdp_ffi.h. No op logic lives here.
//
// Checked against TensorRT 11.4 headers (CI, trtx-sys) and written for the subset shared with 10.3
// (JetPack 6): only pure virtuals of the v1 capability interfaces and getWorkspaceSize are overridden.
#include "NvInferRuntime.h"
#include "rdp_ffi.h"

#include <array>
#include <atomic>
#include <cstdio>
#include <new>
#include <string>
#include <vector>

#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 10
#error "referdino-plugins needs TensorRT 10.0 or newer (IPluginV3); JetPack 6 ships 10.3"
#endif

using namespace nvinfer1;

// The Rust side mirrors these numeric values (src/plugin/types.rs); fail the build if TensorRT changes them.
static_assert(static_cast<int32_t>(DataType::kFLOAT) == 0, "DataType::kFLOAT");
static_assert(static_cast<int32_t>(DataType::kHALF) == 1, "DataType::kHALF");
static_assert(static_cast<int32_t>(DataType::kINT32) == 3, "DataType::kINT32");
static_assert(static_cast<int32_t>(DataType::kINT64) == 8, "DataType::kINT64");
static_assert(static_cast<int32_t>(TensorFormat::kLINEAR) == 0, "TensorFormat::kLINEAR");
static_assert(static_cast<int32_t>(PluginFieldType::kINT8) == 3, "PluginFieldType::kINT8");
static_assert(static_cast<int32_t>(PluginFieldType::kINT16) == 4, "PluginFieldType::kINT16");
static_assert(static_cast<int32_t>(PluginFieldType::kINT32) == 5, "PluginFieldType::kINT32");
static_assert(static_cast<int32_t>(PluginFieldType::kINT64) == 10, "PluginFieldType::kINT64");
static_assert(Dims::MAX_DIMS == RDP_MAX_DIMS, "Dims::MAX_DIMS");
// TensorRT 10+ uses 64-bit extents (Dims64); the Rust side assumes int64_t.
static_assert(sizeof(Dims{}.d[0]) == sizeof(int64_t), "Dims extents must be 64-bit");

namespace {

constexpr int32_t kMaxIO = 8;  // both plugins have at most 7 inputs+outputs

std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};

// To the application's logger (TensorRT's ILoggerFinder, asked at every message: the logger may be
// registered after the library is loaded); without one, errors and warnings go to stderr.
void logMessage(ILogger::Severity severity, char const* msg) noexcept {
    if (msg == nullptr) {
        return;
    }
    ILoggerFinder* finder = gLoggerFinder.load();
    ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr) {
        logger->log(severity, msg);
    } else if (severity <= ILogger::Severity::kWARNING) {
        std::fprintf(stderr, "[referdino-plugins] %s\n", msg);
    }
}

void reportError(char const* where) noexcept {
    try {
        std::string msg = std::string("referdino-plugins: ") + where + ": " + rdp_last_error();
        logMessage(ILogger::Severity::kERROR, msg.c_str());
    } catch (...) {
        logMessage(ILogger::Severity::kERROR, where);
    }
}

RdpTensorDesc toRdp(PluginTensorDesc const& d) noexcept {
    RdpTensorDesc r{};
    r.dtype = static_cast<int32_t>(d.type);
    r.format = static_cast<int32_t>(d.format);
    r.nb_dims = d.dims.nbDims;
    for (int32_t i = 0; i < d.dims.nbDims && i < RDP_MAX_DIMS; ++i) {
        r.dims[i] = d.dims.d[i];
    }
    return r;
}

// Converts n descriptors into `out`; false if there are too many.
template <typename Desc, typename Get>
bool convert(Desc const* descs, int32_t n, RdpTensorDesc* out, Get get) noexcept {
    if (n < 0 || n > kMaxIO) {
        return false;
    }
    for (int32_t i = 0; i < n; ++i) {
        out[i] = toRdp(get(descs[i]));
    }
    return true;
}

PluginTensorDesc const& plainDesc(PluginTensorDesc const& d) noexcept { return d; }
PluginTensorDesc const& dynDesc(DynamicPluginTensorDesc const& d) noexcept { return d.desc; }

class RdPlugin final : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
public:
    explicit RdPlugin(RdpPlugin* handle) noexcept : mHandle(handle) {}
    ~RdPlugin() override { rdp_plugin_destroy(mHandle); }
    RdPlugin(RdPlugin const&) = delete;
    RdPlugin& operator=(RdPlugin const&) = delete;

    // ---- IPluginV3 ----
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override {
        RdpPlugin* copy = rdp_plugin_clone(mHandle);
        if (copy == nullptr) {
            reportError("clone");
            return nullptr;
        }
        auto* p = new (std::nothrow) RdPlugin(copy);
        if (p == nullptr) {
            rdp_plugin_destroy(copy);
        }
        return p;
    }

    // ---- IPluginV3OneCore ----
    AsciiChar const* getPluginName() const noexcept override { return rdp_op_name(rdp_plugin_op(mHandle)); }
    AsciiChar const* getPluginVersion() const noexcept override { return rdp_plugin_version(); }
    AsciiChar const* getPluginNamespace() const noexcept override { return rdp_plugin_namespace(); }

    // ---- IPluginV3OneBuild ----
    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                            int32_t nbOutputs) noexcept override {
        std::array<RdpTensorDesc, kMaxIO> i{}, o{};
        if (!convert(in, nbInputs, i.data(), dynDesc) || !convert(out, nbOutputs, o.data(), dynDesc)) {
            return -1;
        }
        if (rdp_plugin_configure(mHandle, i.data(), nbInputs, o.data(), nbOutputs) != 0) {
            reportError("configurePlugin");
            return -1;
        }
        return 0;
    }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                               int32_t nbInputs) const noexcept override {
        if (nbInputs < 0 || nbInputs > kMaxIO || nbOutputs < 0 || nbOutputs > kMaxIO) {
            return -1;
        }
        std::array<int32_t, kMaxIO> in{}, out{};
        for (int32_t k = 0; k < nbInputs; ++k) {
            in[k] = static_cast<int32_t>(inputTypes[k]);
        }
        if (rdp_plugin_output_types(mHandle, in.data(), nbInputs, out.data(), nbOutputs) != 0) {
            reportError("getOutputDataTypes");
            return -1;
        }
        for (int32_t k = 0; k < nbOutputs; ++k) {
            outputTypes[k] = static_cast<DataType>(out[k]);
        }
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                            int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                            IExprBuilder& exprBuilder) noexcept override {
        if (nbInputs < 0 || nbInputs > kMaxIO || nbOutputs < 0 || nbOutputs > kMaxIO) {
            return -1;
        }
        std::array<int32_t, kMaxIO> ranks{};
        for (int32_t k = 0; k < nbInputs; ++k) {
            ranks[k] = inputs[k].nbDims;
        }
        std::array<RdpShapeRecipe, kMaxIO> recipes{};
        if (rdp_plugin_output_shapes(mHandle, ranks.data(), nbInputs, recipes.data(), nbOutputs) != 0) {
            reportError("getOutputShapes");
            return -1;
        }
        // Rust has checked every referenced (input, dim) against the ranks above.
        for (int32_t o = 0; o < nbOutputs; ++o) {
            RdpShapeRecipe const& r = recipes[o];
            outputs[o].nbDims = r.nb_dims;
            for (int32_t d = 0; d < r.nb_dims; ++d) {
                RdpDimExpr const& e = r.dims[d];
                IDimensionExpr const* expr = nullptr;
                switch (e.kind) {
                case 0: expr = exprBuilder.constant(e.value); break;
                case 1: expr = inputs[e.a_input].d[e.a_dim]; break;
                case 2:
                    expr = exprBuilder.operation(DimensionOperation::kPROD, *inputs[e.a_input].d[e.a_dim],
                                                 *inputs[e.b_input].d[e.b_dim]);
                    break;
                default: break;
                }
                if (expr == nullptr) {
                    logMessage(ILogger::Severity::kERROR, "referdino-plugins: getOutputShapes: bad dimension recipe");
                    return -1;
                }
                outputs[o].d[d] = expr;
            }
        }
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        std::array<RdpTensorDesc, kMaxIO> all{};
        if (nbOutputs < 0 || !convert(inOut, nbInputs + nbOutputs, all.data(), dynDesc)) {
            return false;
        }
        return rdp_plugin_supports(mHandle, pos, all.data(), nbInputs, nbOutputs) == 1;
    }

    int32_t getNbOutputs() const noexcept override { return rdp_plugin_nb_outputs(mHandle); }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override {
        std::array<RdpTensorDesc, kMaxIO> i{}, o{};
        if (!convert(inputs, nbInputs, i.data(), dynDesc) || !convert(outputs, nbOutputs, o.data(), dynDesc)) {
            return 0;
        }
        return rdp_plugin_workspace(mHandle, i.data(), nbInputs, o.data(), nbOutputs);
    }

    // ---- IPluginV3OneRuntime ----
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override {
        std::array<RdpTensorDesc, kMaxIO> i{}, o{};
        if (!convert(in, nbInputs, i.data(), plainDesc) || !convert(out, nbOutputs, o.data(), plainDesc)) {
            return -1;
        }
        if (rdp_plugin_configure(mHandle, i.data(), nbInputs, o.data(), nbOutputs) != 0) {
            reportError("onShapeChange");
            return -1;
        }
        return 0;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
                    void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
        int32_t const nbIn = rdp_plugin_op(mHandle) == 0 ? 5 : 2;
        int32_t const nbOut = rdp_plugin_nb_outputs(mHandle);
        std::array<RdpTensorDesc, kMaxIO> i{}, o{};
        if (!convert(inputDesc, nbIn, i.data(), plainDesc) || !convert(outputDesc, nbOut, o.data(), plainDesc)) {
            return -1;
        }
        if (rdp_plugin_enqueue(mHandle, i.data(), nbIn, o.data(), nbOut, inputs, outputs, workspace,
                               static_cast<void*>(stream)) != 0) {
            reportError("enqueue");
            return -1;
        }
        return 0;
    }

    IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override {
        auto* p = static_cast<RdPlugin*>(clone());
        if (p != nullptr && rdp_plugin_prepare(p->mHandle) != 0) {
            reportError("attachToContext (loading CUDA kernels)");
            delete p;
            return nullptr;
        }
        return p;
    }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override {
        RdpField const* f = nullptr;
        int32_t const n = rdp_plugin_fields(mHandle, &f);
        mFields.fill(PluginField{});
        for (int32_t k = 0; k < n && k < kMaxIO; ++k) {
            mFields[k] = PluginField(f[k].name, f[k].data, static_cast<PluginFieldType>(f[k].field_type), f[k].length);
        }
        mCollection.nbFields = n < kMaxIO ? n : kMaxIO;
        mCollection.fields = mFields.data();
        return &mCollection;
    }

private:
    RdpPlugin* mHandle;
    std::array<PluginField, kMaxIO> mFields{};
    PluginFieldCollection mCollection{};
};

class RdCreator final : public IPluginCreatorV3One {
public:
    explicit RdCreator(int32_t op) noexcept : mOp(op) {
        RdpField const* f = nullptr;
        int32_t const n = rdp_op_fields(op, &f);
        for (int32_t k = 0; k < n && k < kMaxIO; ++k) {
            mNames[k] = PluginField(f[k].name, nullptr, static_cast<PluginFieldType>(f[k].field_type), f[k].length);
        }
        mCollection.nbFields = n < kMaxIO ? n : kMaxIO;
        mCollection.fields = mNames.data();
    }

    IPluginV3* createPlugin(AsciiChar const* /*name*/, PluginFieldCollection const* fc,
                            TensorRTPhase phase) noexcept override {
        try {
            std::vector<RdpField> fields;
            if (fc != nullptr && fc->fields != nullptr) {
                for (int32_t k = 0; k < fc->nbFields; ++k) {
                    PluginField const& f = fc->fields[k];
                    fields.push_back(RdpField{f.name, f.data, static_cast<int32_t>(f.type), f.length});
                }
            }
            RdpPlugin* h = rdp_plugin_create(mOp, fields.data(), static_cast<int32_t>(fields.size()),
                                             phase == TensorRTPhase::kRUNTIME ? 1 : 0);
            if (h == nullptr) {
                reportError("createPlugin");
                return nullptr;
            }
            auto* p = new (std::nothrow) RdPlugin(h);
            if (p == nullptr) {
                rdp_plugin_destroy(h);
            }
            return p;
        } catch (...) {
            logMessage(ILogger::Severity::kERROR, "referdino-plugins: createPlugin: out of memory");
            return nullptr;
        }
    }

    PluginFieldCollection const* getFieldNames() noexcept override { return &mCollection; }
    AsciiChar const* getPluginName() const noexcept override { return rdp_op_name(mOp); }
    AsciiChar const* getPluginVersion() const noexcept override { return rdp_plugin_version(); }
    AsciiChar const* getPluginNamespace() const noexcept override { return rdp_plugin_namespace(); }

private:
    int32_t mOp;
    std::array<PluginField, kMaxIO> mNames{};
    PluginFieldCollection mCollection{};
};

IPluginCreatorInterface* const* creators(int32_t* nb) noexcept {
    static RdCreator msda(0);
    static RdCreator prune(1);
    static IPluginCreatorInterface* const all[] = {&msda, &prune};
    static_assert(sizeof(all) / sizeof(all[0]) == 2, "one creator per op");
    *nb = rdp_op_count() < 2 ? rdp_op_count() : 2;
    return all;
}

}  // namespace

extern "C" {

void* rdp_shim_get_creators(int32_t* nb_creators) {
    return const_cast<IPluginCreatorInterface**>(creators(nb_creators));
}

void rdp_shim_set_logger_finder(void* finder) { gLoggerFinder.store(static_cast<ILoggerFinder*>(finder)); }

void rdp_shim_log(int32_t severity, const char* msg) {
    int32_t const s = severity < 0 ? 0 : (severity > 4 ? 4 : severity);
    logMessage(static_cast<ILogger::Severity>(s), msg);
}

int32_t rdp_shim_register(void* registry) {
    if (registry == nullptr) {
        return -1;
    }
    int32_t n = 0;
    IPluginCreatorInterface* const* all = creators(&n);
    auto* reg = static_cast<IPluginRegistry*>(registry);
    for (int32_t k = 0; k < n; ++k) {
        if (!reg->registerCreator(*all[k], rdp_plugin_namespace())) {
            return -1;
        }
    }
    return 0;
}

}  // extern "C"
