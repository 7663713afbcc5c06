// The stand-in half conversions, exported so that the tests can hold them against the `half` crate.
#include <cuda_fp16.h>

extern "C" std::uint16_t rde_float_to_half(float f) { return __float2half_rn(f).bits; }
extern "C" float rde_half_to_float(std::uint16_t bits) { return __half2float(__half{bits}); }
