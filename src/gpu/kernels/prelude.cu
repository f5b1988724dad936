// Source every runner kernel is compiled with, ahead of its own (compile_kernel, the host
// tests' kernel_host::run, scripts/build-cuda.sh): loads and stores of f32, bf16 and f16
// storage computing in f32 (ld_f32/st_f32, ld_bf16/st_bf16, ld_f16/st_f16, indexed
// by element). bf16 and f16 are raw 16-bit words, so no header is needed: bf16 widens by a shift
// and narrows to nearest even (NaN kept quiet); f16 converts with PTX cvt on the device, and in
// software (the same rounding) when the source runs on the host.
__device__ __forceinline__ float ld_f32(const float* p, unsigned long long i) { return p[i]; }
__device__ __forceinline__ void st_f32(float* p, unsigned long long i, float v) { p[i] = v; }
__device__ __forceinline__ float ld_bf16(const unsigned short* p, unsigned long long i) {
  return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void st_bf16(unsigned short* p, unsigned long long i, float v) {
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = (unsigned short)((u >> 16) | 0x40u); return; }
  u += 0x7fffu + ((u >> 16) & 1u);
  p[i] = (unsigned short)(u >> 16);
}
#ifdef __CUDA_ARCH__
__device__ __forceinline__ float ld_f16(const unsigned short* p, unsigned long long i) {
  float f; unsigned short h = p[i];
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ void st_f16(unsigned short* p, unsigned long long i, float v) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  p[i] = h;
}
#else
/* the same conversions in software, for running this source on the host (kernel_host.rs) */
__device__ __forceinline__ float ld_f16(const unsigned short* p, unsigned long long i) {
  unsigned int h = p[i], s = (h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 1023u;
  float v;
  if (e == 0u) v = (float)m * __uint_as_float(0x33800000u);          /* m * 2^-24 */
  else if (e == 31u) v = __uint_as_float(m ? 0x7fc00000u : 0x7f800000u);
  else return __uint_as_float(s | ((e + 112u) << 23) | (m << 13));
  return __uint_as_float(__float_as_uint(v) | s);
}
__device__ __forceinline__ void st_f16(unsigned short* p, unsigned long long i, float v) {
  unsigned int x = __float_as_uint(v), s = (x >> 16) & 0x8000u, a = x & 0x7fffffffu, r, rem, half;
  if (a > 0x7f800000u) { p[i] = (unsigned short)(s | 0x7e00u); return; }   /* NaN */
  if (a >= 0x477ff000u) { p[i] = (unsigned short)(s | 0x7c00u); return; }  /* to infinity */
  if (a < 0x38800000u) {                                                   /* subnormal */
    if (a < 0x33000000u) { p[i] = (unsigned short)s; return; }
    unsigned int m = (a & 0x7fffffu) | 0x800000u, shift = 126u - (a >> 23);
    r = m >> shift; rem = m & ((1u << shift) - 1u); half = 1u << (shift - 1u);
  } else {
    r = (a - 0x38000000u) >> 13; rem = a & 0x1fffu; half = 0x1000u;
  }
  if (rem > half || (rem == half && (r & 1u))) r++;
  p[i] = (unsigned short)(s | r);
}
#endif
