// Stand-in for CUDA's cuda_fp16.h on the CPU (see ../cuda_emu.h): IEEE binary16 storage and the
// conversions the kernels use, rounding to nearest even like __float2half_rn.
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>

struct __half {
    std::uint16_t bits;
};
struct alignas(4) __half2 {
    __half x, y;
};

inline float __half2float(__half h) {
    const std::uint32_t sign = (std::uint32_t)(h.bits & 0x8000u) << 16;
    const std::uint32_t exp = (h.bits >> 10) & 0x1fu;
    const std::uint32_t mant = h.bits & 0x3ffu;
    if (exp == 0) {
        // Zero or subnormal: mant * 2^-24, exact in float.
        const float v = (float)mant * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    const std::uint32_t bits = exp == 31 ? (sign | 0x7f800000u | (mant << 13))
                                         : (sign | ((exp - 15 + 127) << 23) | (mant << 13));
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline __half __float2half_rn(float f) {
    std::uint32_t x;
    std::memcpy(&x, &f, 4);
    const std::uint16_t sign = (std::uint16_t)((x >> 16) & 0x8000u);
    const std::uint32_t a = x & 0x7fffffffu;
    __half h;
    if (a >= 0x7f800000u) {  // inf, NaN (kept quiet)
        h.bits = (std::uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u | ((a >> 13) & 0x3ffu) : 0u));
    } else if (a >= 0x477ff000u) {  // >= 65520 rounds to inf
        h.bits = (std::uint16_t)(sign | 0x7c00u);
    } else if (a < 0x38800000u) {  // below 2^-14: subnormal or zero, in units of 2^-24 (exact scaling)
        float v;
        std::memcpy(&v, &a, 4);
        h.bits = (std::uint16_t)(sign | (std::uint16_t)nearbyintf(v * 16777216.0f));
    } else {
        std::uint32_t r = ((a >> 23) - 127 + 15) << 10 | ((a & 0x7fffffu) >> 13);
        const std::uint32_t rem = a & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // a carry moves into the exponent, as it should
        h.bits = (std::uint16_t)(sign | r);
    }
    return h;
}

// float2 comes from cuda_emu.h, force-included before every kernel source.
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
