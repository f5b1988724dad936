// The fused step on CUDA: one thread per value, the same arithmetic as cpu_fwd's loops
// (kind 0 Adam, 1 AdamW, 2 SGD). Opt-in (RUNNER_GPU_FUSED=1) until a GPU has run it.
extern "C" __global__ void optimizer_step(float* w, const float* g, float* m, float* v,
    unsigned int n, unsigned int kind, float lr, float lr_t, float ibc1, float ibc2, float decay,
    float b1, float b2, float eps, float wd, float mom) {
  unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float wi = w[i], gi = g[i];
  if (kind == 1u) {
    float mi = b1 * m[i] + (1.f - b1) * gi;
    float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi; v[i] = vi;
    w[i] = wi * decay - lr * (mi * ibc1) / (sqrtf(vi * ibc2) + eps);
    return;
  }
  if (wd > 0.f) gi = gi + wd * wi;
  if (kind == 0u) {
    float mi = b1 * m[i] + (1.f - b1) * gi;
    float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi; v[i] = vi;
    w[i] = wi - lr_t * mi / (sqrtf(vi) + eps);
  } else {
    float mi = mom * m[i] + gi;
    m[i] = mi;
    w[i] = wi - lr * mi;
  }
}
