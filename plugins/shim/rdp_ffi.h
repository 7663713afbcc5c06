// C interface between the TensorRT shim (plugin_shim.cpp) and the Rust plugin logic (src/ffi.rs).
// Every struct here has a #[repr(C)] twin in src/plugin/types.rs; keep them in sync.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RDP_MAX_DIMS 8

typedef struct RdpPlugin RdpPlugin;  // opaque, owned by Rust

typedef struct {
    int32_t dtype;   // nvinfer1::DataType value
    int32_t format;  // nvinfer1::TensorFormat value
    int32_t nb_dims;
    int64_t dims[RDP_MAX_DIMS];
} RdpTensorDesc;

typedef struct {
    int32_t kind;  // 0 constant, 1 input dim, 2 product of two input dims
    int32_t a_input, a_dim, b_input, b_dim;
    int64_t value;
} RdpDimExpr;

typedef struct {
    int32_t nb_dims;
    RdpDimExpr dims[RDP_MAX_DIMS];
} RdpShapeRecipe;

typedef struct {
    const char* name;
    const void* data;
    int32_t field_type;  // nvinfer1::PluginFieldType value
    int32_t length;
} RdpField;

// ---- ops (creators) ----
int32_t rdp_op_count(void);
const char* rdp_op_name(int32_t op);
const char* rdp_plugin_version(void);
const char* rdp_plugin_namespace(void);
// Attribute schema of an op; returns the count, *fields points to static storage.
int32_t rdp_op_fields(int32_t op, const RdpField** fields);
// Creates a plugin from attributes; null on error (see rdp_last_error). runtime != 0 also compiles/loads
// the CUDA kernels for the current context.
RdpPlugin* rdp_plugin_create(int32_t op, const RdpField* fields, int32_t nb_fields, int32_t runtime);

// ---- plugin instances ----
RdpPlugin* rdp_plugin_clone(const RdpPlugin* p);
void rdp_plugin_destroy(RdpPlugin* p);
int32_t rdp_plugin_op(const RdpPlugin* p);
int32_t rdp_plugin_nb_outputs(const RdpPlugin* p);
// All int32_t-returning calls below return 0 on success, -1 on error (see rdp_last_error).
int32_t rdp_plugin_output_types(const RdpPlugin* p, const int32_t* in_types, int32_t nb_in, int32_t* out_types,
                                int32_t nb_out);
int32_t rdp_plugin_output_shapes(const RdpPlugin* p, const int32_t* in_ranks, int32_t nb_in, RdpShapeRecipe* out,
                                 int32_t nb_out);
// Returns 1 if supported, 0 otherwise.
int32_t rdp_plugin_supports(const RdpPlugin* p, int32_t pos, const RdpTensorDesc* descs, int32_t nb_in,
                            int32_t nb_out);
int32_t rdp_plugin_configure(const RdpPlugin* p, const RdpTensorDesc* in, int32_t nb_in, const RdpTensorDesc* out,
                             int32_t nb_out);
size_t rdp_plugin_workspace(const RdpPlugin* p, const RdpTensorDesc* in, int32_t nb_in, const RdpTensorDesc* out,
                            int32_t nb_out);
// Compiles/loads the kernels for the current CUDA context (attachToContext).
int32_t rdp_plugin_prepare(RdpPlugin* p);
// Returns the count; *fields stays valid until the plugin is destroyed.
int32_t rdp_plugin_fields(const RdpPlugin* p, const RdpField** fields);
int32_t rdp_plugin_enqueue(RdpPlugin* p, const RdpTensorDesc* in, int32_t nb_in, const RdpTensorDesc* out,
                           int32_t nb_out, const void* const* inputs, void* const* outputs, void* workspace,
                           void* stream);
// Last error message of this thread (never null; empty when none).
const char* rdp_last_error(void);

// ---- implemented by the shim, exported from the library by Rust (src/ffi.rs) ----
void* rdp_shim_get_creators(int32_t* nb_creators);
void rdp_shim_set_logger_finder(void* finder);
int32_t rdp_shim_register(void* registry);
// One log message (severity: nvinfer1::ILogger::Severity value) to TensorRT's logger, found through the
// ILoggerFinder given to setLoggerFinder; without one, errors and warnings go to stderr. Never throws.
void rdp_shim_log(int32_t severity, const char* msg);

#ifdef __cplusplus
}
#endif
