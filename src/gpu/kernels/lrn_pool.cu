// The kernel: cpu_fwd's loop body, one thread per pooled output, computing in f32; one entry
// point per storage format (the loads and stores of kernels::PRELUDE (prelude.cu)), so that bf16 and
// f16 maps are neither widened nor narrowed by separate passes.
#define LRN_MAX_POOL(NAME, T, LD, ST)                                                      \
extern "C" __global__ void NAME(const T* x, T* out, unsigned int n, unsigned int c,         \
                                unsigned int h, unsigned int w, unsigned int ho,           \
                                unsigned int wo, unsigned int k, unsigned int stride,      \
                                unsigned int radius, float alpha, float beta, float bias) { \
  unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;                                  \
  if (i >= n * c * ho * wo) return;                                                        \
  unsigned int ox = i % wo, oy = (i / wo) % ho, ch = (i / (wo * ho)) % c;                  \
  unsigned int b = i / (wo * ho * c);                                                      \
  size_t plane = (size_t)h * w;                                                            \
  const T* img = x + (size_t)b * c * plane;                                                \
  unsigned int lo = ch >= radius ? ch - radius : 0u;                                       \
  unsigned int hi = ch + radius < c - 1u ? ch + radius : c - 1u;                           \
  float best = __int_as_float(0xff800000);  /* -infinity */                                \
  for (unsigned int ky = 0; ky < k; ky++) {                                                \
    for (unsigned int kx = 0; kx < k; kx++) {                                              \
      size_t p = (size_t)(oy * stride + ky) * w + ox * stride + kx;                        \
      float sum = 0.f;                                                                     \
      for (unsigned int q = lo; q <= hi; q++) {                                            \
        float v = LD(img, q * plane + p);                                                  \
        sum += v * v;                                                                      \
      }                                                                                    \
      float d = bias + alpha * sum;                                                        \
      float v = LD(img, ch * plane + p);                                                   \
      float y = beta == 0.75f ? v / (sqrtf(d) * sqrtf(sqrtf(d))) : v / powf(d, beta);      \
      best = fmaxf(best, y);                                                               \
    }                                                                                      \
  }                                                                                        \
  ST(out, i, best);                                                                        \
}
LRN_MAX_POOL(lrn_max_pool_f32, float, ld_f32, st_f32)
LRN_MAX_POOL(lrn_max_pool_bf16, unsigned short, ld_bf16, st_bf16)
LRN_MAX_POOL(lrn_max_pool_f16, unsigned short, ld_f16, st_f16)
