// C API of the referdino TensorRT shim: the only surface Rust calls. Every function catches C++
// exceptions, reports failure as a non-zero return (or a null handle) and writes a message into the
// caller's `err` buffer (always NUL-terminated when err_len > 0).
#ifndef REFERDINO_TRT_H
#define REFERDINO_TRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rd_trt_runtime rd_trt_runtime;
typedef struct rd_trt_engine rd_trt_engine;

// Receives every TensorRT log line (severity: 0 internal error, 1 error, 2 warning, 3 info, 4 verbose).
typedef void (*rd_trt_log_fn)(int32_t severity, const char* msg);
// Builder progress: a phase starts (step = -1, nb_steps = total), advances (step >= 0) or ends
// (step = nb_steps = -2).
typedef void (*rd_trt_progress_fn)(void* user, const char* phase, int32_t step, int32_t nb_steps);

// TensorRT version the shim was compiled against (major*10000 + minor*100 + patch).
int32_t rd_trt_header_version(void);
// TensorRT version of the loaded library (getInferLibVersion(): major*10000 + minor*100 + patch).
int32_t rd_trt_library_version(void);
// Exact version of the loaded library: out[0..4] = major, minor, patch, build
// (getInferLib{Major,Minor,Patch,Build}Version()). Plans need exactly the version that built them.
void rd_trt_library_version_exact(int32_t out[4]);
// Exact version of the headers the shim was compiled against: NV_TENSORRT_{MAJOR,MINOR,PATCH,BUILD}.
void rd_trt_header_version_exact(int32_t out[4]);
// Installs the log sink (may be called once, before anything else).
void rd_trt_set_log_sink(rd_trt_log_fn sink);

// Loads a plugin library into TensorRT's plugin registry (dlopen + creator registration).
int32_t rd_trt_load_plugins(const char* path, char* err, size_t err_len);

// Creates a runtime. Fails if TensorRT logs any error while creating it (a runtime created without a
// usable GPU can come back non-null but unusable).
rd_trt_runtime* rd_trt_runtime_create(char* err, size_t err_len);
void rd_trt_runtime_destroy(rd_trt_runtime* rt);

// Deserializes a plan and creates one execution context for it.
rd_trt_engine* rd_trt_engine_load(rd_trt_runtime* rt, const void* plan, size_t plan_len, char* err,
                                  size_t err_len);
// Another execution context of `e`'s engine: the same weights (deserialized once, not copied), its own
// shapes, bindings and activations, for another CUDA stream. The engine is freed with its last handle.
// `e`'s dynamic batch is not carried over: set it on the new handle.
rd_trt_engine* rd_trt_engine_share(const rd_trt_engine* e, char* err, size_t err_len);
// Frees `e`'s execution context (its activation memory), keeping the engine: `e` is then a plan that
// only rd_trt_engine_share (to make contexts for streams) and rd_trt_engine_destroy take; the calls
// that need a context fail on it.
void rd_trt_engine_drop_context(rd_trt_engine* e);
void rd_trt_engine_destroy(rd_trt_engine* e);
int32_t rd_trt_engine_num_io(const rd_trt_engine* e);
// I/O tensor `index`: name (owned by the engine), is_input, TensorRT DataType value, rank and dims
// (dims must hold 8 values; dynamic dims are -1 until rd_trt_engine_set_batch).
int32_t rd_trt_engine_io(const rd_trt_engine* e, int32_t index, const char** name, int32_t* is_input,
                         int32_t* dtype, int32_t* nb_dims, int64_t* dims);
// For an engine with a dynamic batch axis: sets every dynamic dim of every input to `batch` (which
// must lie in the plan's optimization profile); rd_trt_engine_io then reports the resolved shapes.
// A no-op on static engines.
int32_t rd_trt_engine_set_batch(rd_trt_engine* e, int32_t batch, char* err, size_t err_len);
int32_t rd_trt_engine_set_address(rd_trt_engine* e, const char* name, uint64_t device_ptr, char* err,
                                  size_t err_len);
// enqueueV3 on `stream` (a cudaStream_t / CUstream).
int32_t rd_trt_engine_enqueue(rd_trt_engine* e, void* stream, char* err, size_t err_len);

typedef struct rd_trt_build_options {
    const char* onnx_path;          // input ONNX
    const char* plan_path;          // output plan
    const char* timing_cache_path;  // read if present, written after the build; may be NULL
    const char* layer_info_path;    // engine inspector JSON; may be NULL
    uint64_t workspace_bytes;       // workspace pool limit (engines run on the GPU only: no DLA)
    int32_t optimization_level;     // -1: TensorRT default
    rd_trt_progress_fn progress;    // may be NULL
    void* progress_user;
    // Batch range of the optimization profile for inputs with dynamic dims (all 0: static engine;
    // a dynamic input then fails the build).
    int32_t batch_min;
    int32_t batch_opt;
    int32_t batch_max;
    // Outputs.
    int64_t layer_counts[16];       // network layers by output DataType value
    uint64_t plan_bytes;
} rd_trt_build_options;

// Parses the ONNX (strongly typed network) and builds and writes a plan.
int32_t rd_trt_build(rd_trt_build_options* opts, char* err, size_t err_len);

#ifdef __cplusplus
}
#endif
#endif
