// Thin C++17 shim over TensorRT's C++ API for referdino (see referdino_trt.h).
//
// Kept to the API common to TensorRT 10.3 (JetPack 6) and 11.x; differences are behind
// NV_TENSORRT_MAJOR. No class of TensorRT is declared by hand: everything comes from the real headers
// (TensorRT 11 changed ILogger's base class, and a hand-written declaration crashes inside TensorRT).

#include "referdino_trt.h"

#include <NvInfer.h>
#include <NvInferRuntime.h>
#include <NvOnnxParser.h>

#include <dlfcn.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace {

using nvinfer1::ILogger;

void write_err(char* err, size_t len, const std::string& msg) {
    if (err == nullptr || len == 0) return;
    size_t n = msg.size() < len - 1 ? msg.size() : len - 1;
    std::memcpy(err, msg.data(), n);
    err[n] = '\0';
}

// One process-wide logger. It forwards to the Rust sink and remembers error messages so that a call
// can be failed when TensorRT logged an error during it, even if it returned a non-null object.
class Logger final : public ILogger {
public:
    void log(Severity severity, const char* msg) noexcept override {
        rd_trt_log_fn sink = sink_.load();
        if (sink != nullptr) sink(static_cast<int32_t>(severity), msg);
        if (severity == Severity::kERROR || severity == Severity::kINTERNAL_ERROR) {
            std::lock_guard<std::mutex> g(mu_);
            // Bounded: errors logged outside a begin()/take() pair (at enqueue time, in a run of
            // hours) would otherwise pile up here; the sink has them all.
            if (errors_.size() < kMaxErrorBytes) {
                if (!errors_.empty()) errors_ += "; ";
                errors_ += msg;
            }
        }
    }
    void set_sink(rd_trt_log_fn s) { sink_.store(s); }
    // Clears the error record; call before an operation whose errors are to be checked.
    void begin() {
        std::lock_guard<std::mutex> g(mu_);
        errors_.clear();
    }
    // Errors logged since begin().
    std::string take() {
        std::lock_guard<std::mutex> g(mu_);
        std::string e;
        e.swap(errors_);
        return e;
    }

private:
    static constexpr size_t kMaxErrorBytes = 16 * 1024;
    std::atomic<rd_trt_log_fn> sink_{nullptr};
    std::mutex mu_;
    std::string errors_;
};

Logger& logger() {
    static Logger l;
    return l;
}

// Serializes calls that use the logger's error record (TensorRT calls from several threads would
// otherwise mix their errors).
std::mutex& api_mutex() {
    static std::mutex m;
    return m;
}

std::string or_default(std::string s, const char* fallback) { return s.empty() ? fallback : s; }

bool read_file(const char* path, std::vector<char>& out) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return false;
    out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    return true;
}

bool write_file(const char* path, const void* data, size_t len) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!f) return false;
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(len));
    return static_cast<bool>(f);
}

class Progress final : public nvinfer1::IProgressMonitor {
public:
    Progress(rd_trt_progress_fn f, void* user) : f_(f), user_(user) {}
    void phaseStart(const char* phase, const char* /*parent*/, int32_t nb_steps) noexcept override {
        if (f_ != nullptr) f_(user_, phase, -1, nb_steps);
    }
    bool stepComplete(const char* phase, int32_t step) noexcept override {
        if (f_ != nullptr) f_(user_, phase, step, 0);
        return true;  // never cancel
    }
    void phaseFinish(const char* phase) noexcept override {
        if (f_ != nullptr) f_(user_, phase, -2, -2);
    }

private:
    rd_trt_progress_fn f_;
    void* user_;
};

}  // namespace

struct rd_trt_runtime {
    std::unique_ptr<nvinfer1::IRuntime> runtime;
};

struct rd_trt_engine {
    // Shared by every handle made with rd_trt_engine_share; each handle owns its context.
    std::shared_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    std::vector<std::string> names;
};

extern "C" {

int32_t rd_trt_header_version(void) {
    return NV_TENSORRT_MAJOR * 10000 + NV_TENSORRT_MINOR * 100 + NV_TENSORRT_PATCH;
}

int32_t rd_trt_library_version(void) {
    // getInferLibVersion() returns NV_TENSORRT_VERSION: major*1000 + minor*100 + patch up to TensorRT 8.6,
    // major*10000 + minor*100 + patch from TensorRT 10.0 (100300 for 10.3.0, 110400 for 11.4.0; the
    // macro NV_TENSORRT_VERSION_INT in NvInferRuntimeBase.h). The shim needs 10.3+, so the first branch
    // only guards against an older library found at run time; normalize to the 10.0+ encoding.
    int32_t v = getInferLibVersion();
    if (v < 100000) {
        int32_t major = v / 1000;
        int32_t minor = (v / 100) % 10;
        int32_t patch = v % 100;
        return major * 10000 + minor * 100 + patch;
    }
    return v;
}

void rd_trt_library_version_exact(int32_t out[4]) {
    int32_t v = rd_trt_library_version();
    out[0] = v / 10000;
    out[1] = (v / 100) % 100;
    out[2] = v % 100;
    // getInferLibBuildVersion() is declared by the TensorRT 11 headers but not by every 10.x header set
    // we compile against, so it is looked up in the loaded library (libnvinfer, linked by this shim);
    // -1 (unknown) when it is absent.
    using VersionFn = int32_t (*)();
    void* sym = dlsym(RTLD_DEFAULT, "getInferLibBuildVersion");
    out[3] = sym != nullptr ? reinterpret_cast<VersionFn>(sym)() : -1;
}

void rd_trt_header_version_exact(int32_t out[4]) {
    out[0] = NV_TENSORRT_MAJOR;
    out[1] = NV_TENSORRT_MINOR;
    out[2] = NV_TENSORRT_PATCH;
    out[3] = NV_TENSORRT_BUILD;
}

void rd_trt_set_log_sink(rd_trt_log_fn sink) { logger().set_sink(sink); }

int32_t rd_trt_load_plugins(const char* path, char* err, size_t err_len) {
    try {
        std::lock_guard<std::mutex> g(api_mutex());
        logger().begin();
        nvinfer1::IPluginRegistry* reg = getPluginRegistry();
        if (reg == nullptr) {
            write_err(err, err_len, "TensorRT returned no plugin registry");
            return 1;
        }
        auto handle = reg->loadLibrary(path);
        std::string logged = logger().take();
        if (handle == nullptr) {
            write_err(err, err_len,
                      std::string("cannot load plugin library ") + path + ": " +
                          or_default(logged, "TensorRT gave no reason (missing file or symbols?)"));
            return 1;
        }
        return 0;
    } catch (const std::exception& e) {
        write_err(err, err_len, e.what());
        return 1;
    } catch (...) {
        write_err(err, err_len, "unknown C++ exception while loading plugins");
        return 1;
    }
}

rd_trt_runtime* rd_trt_runtime_create(char* err, size_t err_len) {
    try {
        std::lock_guard<std::mutex> g(api_mutex());
        logger().begin();
        std::unique_ptr<nvinfer1::IRuntime> rt(nvinfer1::createInferRuntime(logger()));
        std::string logged = logger().take();
        if (!rt || !logged.empty()) {
            // With no usable GPU TensorRT logs a CUDA initialization failure and may still hand back a
            // pointer that must never be used (not even deleted).
            (void)rt.release();
            write_err(err, err_len,
                      "TensorRT runtime creation failed: " + or_default(logged, "null runtime"));
            return nullptr;
        }
        auto* out = new rd_trt_runtime();
        out->runtime = std::move(rt);
        return out;
    } catch (const std::exception& e) {
        write_err(err, err_len, e.what());
        return nullptr;
    } catch (...) {
        write_err(err, err_len, "unknown C++ exception while creating the runtime");
        return nullptr;
    }
}

void rd_trt_runtime_destroy(rd_trt_runtime* rt) { delete rt; }

rd_trt_engine* rd_trt_engine_load(rd_trt_runtime* rt, const void* plan, size_t plan_len, char* err,
                                  size_t err_len) {
    if (rt == nullptr || plan == nullptr) {
        write_err(err, err_len, "null runtime or plan");
        return nullptr;
    }
    try {
        std::lock_guard<std::mutex> g(api_mutex());
        logger().begin();
        std::unique_ptr<nvinfer1::ICudaEngine> engine(rt->runtime->deserializeCudaEngine(plan, plan_len));
        std::string logged = logger().take();
        if (!engine || !logged.empty()) {
            write_err(err, err_len, "deserializing the plan failed: " + or_default(logged, "null engine"));
            return nullptr;
        }
        logger().begin();
        std::unique_ptr<nvinfer1::IExecutionContext> ctx(engine->createExecutionContext());
        logged = logger().take();
        if (!ctx || !logged.empty()) {
            write_err(err, err_len,
                      "creating an execution context failed: " + or_default(logged, "null context"));
            return nullptr;
        }
        auto* out = new rd_trt_engine();
        int32_t n = engine->getNbIOTensors();
        for (int32_t i = 0; i < n; ++i) out->names.emplace_back(engine->getIOTensorName(i));
        out->engine = std::move(engine);
        out->context = std::move(ctx);
        return out;
    } catch (const std::exception& e) {
        write_err(err, err_len, e.what());
        return nullptr;
    } catch (...) {
        write_err(err, err_len, "unknown C++ exception while loading the engine");
        return nullptr;
    }
}

rd_trt_engine* rd_trt_engine_share(const rd_trt_engine* e, char* err, size_t err_len) {
    if (e == nullptr || !e->engine) {
        write_err(err, err_len, "null engine");
        return nullptr;
    }
    try {
        std::lock_guard<std::mutex> g(api_mutex());
        logger().begin();
        std::unique_ptr<nvinfer1::IExecutionContext> ctx(e->engine->createExecutionContext());
        std::string logged = logger().take();
        if (!ctx || !logged.empty()) {
            write_err(err, err_len,
                      "creating another execution context failed: " + or_default(logged, "null context"));
            return nullptr;
        }
        auto* out = new rd_trt_engine();
        out->names = e->names;
        out->engine = e->engine;
        out->context = std::move(ctx);
        return out;
    } catch (const std::exception& ex) {
        write_err(err, err_len, ex.what());
        return nullptr;
    } catch (...) {
        write_err(err, err_len, "unknown C++ exception while sharing the engine");
        return nullptr;
    }
}

void rd_trt_engine_drop_context(rd_trt_engine* e) {
    if (e == nullptr) return;
    // Under the API mutex: another handle of the same engine may be creating a context meanwhile.
    std::lock_guard<std::mutex> g(api_mutex());
    e->context.reset();
}

void rd_trt_engine_destroy(rd_trt_engine* e) {
    if (e == nullptr) return;
    e->context.reset();  // the context must go before its engine (which other handles may still hold)
    e->engine.reset();
    delete e;
}

int32_t rd_trt_engine_num_io(const rd_trt_engine* e) {
    return e == nullptr ? 0 : static_cast<int32_t>(e->names.size());
}

int32_t rd_trt_engine_io(const rd_trt_engine* e, int32_t index, const char** name, int32_t* is_input,
                         int32_t* dtype, int32_t* nb_dims, int64_t* dims) {
    if (e == nullptr || !e->context || index < 0 || index >= static_cast<int32_t>(e->names.size())) return 1;
    const char* n = e->names[static_cast<size_t>(index)].c_str();
    *name = n;
    *is_input = e->engine->getTensorIOMode(n) == nvinfer1::TensorIOMode::kINPUT ? 1 : 0;
    *dtype = static_cast<int32_t>(e->engine->getTensorDataType(n));
    // The context's shape: the engine's for static tensors, and for a dynamic-batch engine the shape
    // at the batch last set by rd_trt_engine_set_batch (-1 before that).
    nvinfer1::Dims d = e->context->getTensorShape(n);
    if (d.nbDims < 0 || d.nbDims > 8) return 1;
    *nb_dims = d.nbDims;
    for (int32_t i = 0; i < d.nbDims; ++i) dims[i] = static_cast<int64_t>(d.d[i]);
    return 0;
}

int32_t rd_trt_engine_set_batch(rd_trt_engine* e, int32_t batch, char* err, size_t err_len) {
    if (e == nullptr || !e->context) {
        write_err(err, err_len, e == nullptr ? "null engine" : "a plan without an execution context");
        return 1;
    }
    try {
        for (const std::string& name : e->names) {
            const char* n = name.c_str();
            if (e->engine->getTensorIOMode(n) != nvinfer1::TensorIOMode::kINPUT) continue;
            nvinfer1::Dims d = e->engine->getTensorShape(n);
            bool dynamic = false;
            for (int32_t i = 0; i < d.nbDims; ++i) {
                if (d.d[i] < 0) {
                    d.d[i] = batch;
                    dynamic = true;
                }
            }
            if (!dynamic) continue;
            if (!e->context->setInputShape(n, d)) {
                nvinfer1::Dims lo = e->engine->getProfileShape(n, 0, nvinfer1::OptProfileSelector::kMIN);
                nvinfer1::Dims hi = e->engine->getProfileShape(n, 0, nvinfer1::OptProfileSelector::kMAX);
                std::string msg = "batch " + std::to_string(batch) + " is outside the plan's optimization profile for input " + name;
                for (int32_t i = 0; i < lo.nbDims && i < hi.nbDims; ++i) {
                    if (lo.d[i] != hi.d[i]) {
                        msg += " (objects " + std::to_string(lo.d[i]) + ".." + std::to_string(hi.d[i]) + ")";
                        break;
                    }
                }
                write_err(err, err_len, msg);
                return 1;
            }
        }
        return 0;
    } catch (const std::exception& ex) {
        write_err(err, err_len, ex.what());
        return 1;
    } catch (...) {
        write_err(err, err_len, "unknown C++ exception while setting the batch");
        return 1;
    }
}

int32_t rd_trt_engine_set_address(rd_trt_engine* e, const char* name, uint64_t device_ptr, char* err,
                                  size_t err_len) {
    if (e == nullptr || !e->context) {
        write_err(err, err_len, e == nullptr ? "null engine" : "a plan without an execution context");
        return 1;
    }
    if (!e->context->setTensorAddress(name, reinterpret_cast<void*>(static_cast<uintptr_t>(device_ptr)))) {
        write_err(err, err_len, std::string("setTensorAddress failed for tensor ") + name);
        return 1;
    }
    return 0;
}

int32_t rd_trt_engine_enqueue(rd_trt_engine* e, void* stream, char* err, size_t err_len) {
    if (e == nullptr || !e->context) {
        write_err(err, err_len, e == nullptr ? "null engine" : "a plan without an execution context");
        return 1;
    }
    if (!e->context->enqueueV3(static_cast<cudaStream_t>(stream))) {
        write_err(err, err_len, "enqueueV3 failed (see the TensorRT log above)");
        return 1;
    }
    return 0;
}

int32_t rd_trt_build(rd_trt_build_options* o, char* err, size_t err_len) {
    if (o == nullptr || o->onnx_path == nullptr || o->plan_path == nullptr) {
        write_err(err, err_len, "missing ONNX or plan path");
        return 1;
    }
    try {
        std::unique_ptr<nvinfer1::IBuilder> builder(nvinfer1::createInferBuilder(logger()));
        if (!builder) {
            write_err(err, err_len, "createInferBuilder failed");
            return 1;
        }
#if NV_TENSORRT_MAJOR < 11
        // TensorRT 10: precision comes from the ONNX only in a strongly typed network.
        uint32_t flags = 1U << static_cast<uint32_t>(nvinfer1::NetworkDefinitionCreationFlag::kSTRONGLY_TYPED);
#else
        // TensorRT 11 networks are always strongly typed (the flag is deprecated and ignored).
        uint32_t flags = 0;
#endif
        std::unique_ptr<nvinfer1::INetworkDefinition> network(builder->createNetworkV2(flags));
        std::unique_ptr<nvonnxparser::IParser> parser(nvonnxparser::createParser(*network, logger()));
        if (!network || !parser) {
            write_err(err, err_len, "cannot create network or ONNX parser");
            return 1;
        }
        if (!parser->parseFromFile(o->onnx_path, static_cast<int32_t>(ILogger::Severity::kWARNING))) {
            std::string msg = std::string("ONNX parser rejected ") + o->onnx_path + ":";
            for (int32_t i = 0; i < parser->getNbErrors(); ++i) {
                msg += " [node ";
                msg += std::to_string(parser->getError(i)->node());
                msg += "] ";
                msg += parser->getError(i)->desc();
            }
            write_err(err, err_len, msg);
            return 1;
        }
        for (int i = 0; i < 16; ++i) o->layer_counts[i] = 0;
        for (int32_t i = 0; i < network->getNbLayers(); ++i) {
            nvinfer1::ILayer* l = network->getLayer(i);
            if (l->getNbOutputs() < 1 || l->getOutput(0) == nullptr) continue;
            int32_t t = static_cast<int32_t>(l->getOutput(0)->getType());
            if (t >= 0 && t < 16) o->layer_counts[t] += 1;
        }

        std::unique_ptr<nvinfer1::IBuilderConfig> config(builder->createBuilderConfig());
        config->setMemoryPoolLimit(nvinfer1::MemoryPoolType::kWORKSPACE, o->workspace_bytes);
        // A dynamic batch axis (the object engines' symbolic `objects` dim, -1 here) gets one
        // optimization profile: every -1 of every input is the batch, at min / opt / max.
        nvinfer1::IOptimizationProfile* profile = nullptr;
        for (int32_t i = 0; i < network->getNbInputs(); ++i) {
            nvinfer1::ITensor* in = network->getInput(i);
            nvinfer1::Dims d = in->getDimensions();
            bool dynamic = false;
            for (int32_t j = 0; j < d.nbDims; ++j) dynamic = dynamic || d.d[j] < 0;
            if (!dynamic) continue;
            if (o->batch_min < 1 || o->batch_opt < o->batch_min || o->batch_max < o->batch_opt) {
                write_err(err, err_len, std::string("input ") + in->getName() + " of " + o->onnx_path +
                                            " has a dynamic axis but no valid batch range was given (min " +
                                            std::to_string(o->batch_min) + ", opt " + std::to_string(o->batch_opt) +
                                            ", max " + std::to_string(o->batch_max) + ")");
                return 1;
            }
            if (profile == nullptr) profile = builder->createOptimizationProfile();
            const int32_t at[3] = {o->batch_min, o->batch_opt, o->batch_max};
            const nvinfer1::OptProfileSelector sel[3] = {nvinfer1::OptProfileSelector::kMIN,
                                                         nvinfer1::OptProfileSelector::kOPT,
                                                         nvinfer1::OptProfileSelector::kMAX};
            for (int k = 0; k < 3; ++k) {
                nvinfer1::Dims s = d;
                for (int32_t j = 0; j < s.nbDims; ++j)
                    if (s.d[j] < 0) s.d[j] = at[k];
                if (!profile->setDimensions(in->getName(), sel[k], s)) {
                    write_err(err, err_len, std::string("optimization profile rejected for input ") + in->getName());
                    return 1;
                }
            }
        }
        if (profile != nullptr && config->addOptimizationProfile(profile) < 0) {
            write_err(err, err_len, "the optimization profile is invalid (see the TensorRT log)");
            return 1;
        }
        config->setProfilingVerbosity(nvinfer1::ProfilingVerbosity::kDETAILED);
        if (o->optimization_level >= 0) config->setBuilderOptimizationLevel(o->optimization_level);
        Progress progress(o->progress, o->progress_user);
        if (o->progress != nullptr) config->setProgressMonitor(&progress);

        std::vector<char> cache_blob;
        if (o->timing_cache_path != nullptr) read_file(o->timing_cache_path, cache_blob);
        std::unique_ptr<nvinfer1::ITimingCache> cache(
            config->createTimingCache(cache_blob.empty() ? nullptr : cache_blob.data(), cache_blob.size()));
        // A cache from another TensorRT version or GPU is rejected instead of silently ignored.
        if (!cache || !config->setTimingCache(*cache, false)) {
            write_err(err, err_len, std::string("timing cache ") +
                                        (o->timing_cache_path ? o->timing_cache_path : "(new)") +
                                        " cannot be used (built by another TensorRT or GPU? delete it)");
            return 1;
        }

        std::unique_ptr<nvinfer1::IHostMemory> plan(builder->buildSerializedNetwork(*network, *config));
        if (!plan || plan->size() == 0) {
            write_err(err, err_len, std::string("building ") + o->onnx_path + " failed (see the TensorRT log)");
            return 1;
        }
        if (!write_file(o->plan_path, plan->data(), plan->size())) {
            write_err(err, err_len, std::string("cannot write ") + o->plan_path);
            return 1;
        }
        o->plan_bytes = plan->size();

        if (o->timing_cache_path != nullptr) {
            const nvinfer1::ITimingCache* used = config->getTimingCache();
            std::unique_ptr<nvinfer1::IHostMemory> blob(used ? used->serialize() : nullptr);
            if (blob && !write_file(o->timing_cache_path, blob->data(), blob->size())) {
                write_err(err, err_len, std::string("cannot write timing cache ") + o->timing_cache_path);
                return 1;
            }
        }

        if (o->layer_info_path != nullptr) {
            std::unique_ptr<nvinfer1::IRuntime> rt(nvinfer1::createInferRuntime(logger()));
            std::unique_ptr<nvinfer1::ICudaEngine> engine(
                rt ? rt->deserializeCudaEngine(plan->data(), plan->size()) : nullptr);
            std::unique_ptr<nvinfer1::IEngineInspector> insp(engine ? engine->createEngineInspector() : nullptr);
            const char* info =
                insp ? insp->getEngineInformation(nvinfer1::LayerInformationFormat::kJSON) : nullptr;
            if (info != nullptr) write_file(o->layer_info_path, info, std::strlen(info));
        }
        return 0;
    } catch (const std::exception& e) {
        write_err(err, err_len, e.what());
        return 1;
    } catch (...) {
        write_err(err, err_len, "unknown C++ exception while building");
        return 1;
    }
}

}  // extern "C"
