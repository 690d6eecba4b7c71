// bf16 dot product: the smallest kernel that proves the ISPC chain (compile for two targets,
// dispatch at run time, link, call from Rust). bf16 values travel as their 16 raw bits; a bf16
// is the upper half of an f32, so widening is a 16-bit shift.

#include "bf16.isph"

export uniform float ispc_dot_bf16(uniform const uint16 a[], uniform const uint16 b[], uniform int64 n) {
    float acc = 0.0f;
    foreach (i = 0 ... n) {
        acc += bf16_to_f32(a[i]) * bf16_to_f32(b[i]);
    }
    return reduce_add(acc);
}
