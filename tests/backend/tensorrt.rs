//! The TensorRT backend's failure paths that can run on any machine (feature `tensorrt`).
#![cfg(feature = "tensorrt")]

use referdino::backend::tensorrt::{dtype_from_trt, ffi, TensorRtBackend, TrtOptions};
use referdino::tensor::DType;

#[test]
fn backend_creation_fails_cleanly_without_shim_or_gpu() {
    // Either the shim is missing (CI) or there is no CUDA driver/GPU: both must be an Err, never a panic
    // or a crash inside TensorRT.
    let e = match TensorRtBackend::new(TrtOptions::default()) {
        Ok(_) => return, // a real GPU with TensorRT: nothing to check here
        Err(e) => e.to_string(),
    };
    if !ffi::SHIM_BUILT {
        assert!(e.contains("built without the TensorRT shim"), "{e}");
    } else {
        assert!(e.contains("CUDA") || e.contains("TensorRT"), "{e}");
    }
}

#[test]
fn tensorrt_data_types_map_to_ours() {
    assert_eq!(dtype_from_trt(0), Some(DType::F32));
    assert_eq!(dtype_from_trt(1), Some(DType::F16));
    assert_eq!(dtype_from_trt(8), Some(DType::I64));
    assert_eq!(dtype_from_trt(4), Some(DType::Bool));
    assert_eq!(dtype_from_trt(2), None); // int8 I/O is not bindable: Q/DQ stays inside engines
}
