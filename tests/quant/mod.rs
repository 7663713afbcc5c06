//! `src/quant/` and the precision passes: calibration maths, Q/DQ insertion, FP16/INT8 export,
//! `referdino calibrate`/`build`, agreement.

mod agreement;
mod calibration;
mod int8_build;
mod int8_graph;
mod int8_products;
mod precision;
mod qdq;
mod streaming;
