// The kernel: cpu_fwd's loop body, one thread per output value.
__device__ __forceinline__ void taps(unsigned int o, unsigned int inp, unsigned int out,
                                     unsigned int method, unsigned int* lo, unsigned int* hi,
                                     float* frac) {
  double scale = (double)inp / (double)out;
  double src = method == 0 ? (double)o * scale : ((double)o + 0.5) * scale - 0.5;
  double f = floor(src);
  double l = f > 0.0 ? f : 0.0, h = f + 1.0 > 0.0 ? f + 1.0 : 0.0;
  *lo = (unsigned int)l < inp - 1 ? (unsigned int)l : inp - 1;
  *hi = (unsigned int)h < inp - 1 ? (unsigned int)h : inp - 1;
  *frac = (float)(src - f);
}

extern "C" __global__ void fused_resize(const unsigned char* px, float* out, unsigned int n,
                                        unsigned int h, unsigned int w, unsigned int s,
                                        unsigned int method) {
  unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * 3u * s * s) return;
  unsigned int ox = i % s, oy = (i / s) % s, ch = (i / (s * s)) % 3u, b = i / (3u * s * s);
  const unsigned char* img = px + (size_t)b * h * w * 3u;
  unsigned int ylo, yhi, xlo, xhi;
  float fy, fx;
  taps(oy, h, s, method, &ylo, &yhi, &fy);
  taps(ox, w, s, method, &xlo, &xhi, &fx);
  #define P(y, x) ((float)img[((size_t)(y) * w + (x)) * 3u + ch])
  float a0 = (1.f - fy) * P(ylo, xlo) + fy * P(yhi, xlo);
  float a1 = (1.f - fy) * P(ylo, xhi) + fy * P(yhi, xhi);
  #undef P
  out[i] = (1.f - fx) * a0 + fx * a1;
}
