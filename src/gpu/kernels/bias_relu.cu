// Bias and optional ReLU in place over an NCHW output, computed in f32, one thread per value;
// one entry point per storage format (the loads and stores of kernels::PRELUDE (prelude.cu)).
#define BIAS_ACT(NAME, T, LD, ST)                                                          \
extern "C" __global__ void NAME(T* y, const T* b, unsigned int c, unsigned int hw,         \
                                unsigned long long n, unsigned int relu) {                 \
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;        \
  unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;                    \
  for (; i < n; i += step) {                                                               \
    float v = LD(y, i) + LD(b, (i / hw) % c);                                              \
    if (relu && !(v > 0.f)) v = 0.f;                                                       \
    ST(y, i, v);                                                                           \
  }                                                                                        \
}
BIAS_ACT(bias_act_f32, float, ld_f32, st_f32)
BIAS_ACT(bias_act_bf16, unsigned short, ld_bf16, st_bf16)
BIAS_ACT(bias_act_f16, unsigned short, ld_f16, st_f16)
