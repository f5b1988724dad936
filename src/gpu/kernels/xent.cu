// SoftmaxXent::cpu_fwd's loop body as a kernel, one thread per row; and ColumnSums, one
// thread per column summing the rows in order.
extern "C" __global__ void column_sums(const float* x, float* out, unsigned int rows,
                                       unsigned int width, unsigned int from, unsigned int count) {
  unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= count) return;
  float s = 0.f;
  for (unsigned int r = 0; r < rows; r++) s += x[(size_t)r * width + from + j];
  out[j] = s;
}

extern "C" __global__ void softmax_xent_grad(const float* z, const unsigned int* y, float* out,
                                             unsigned int b, unsigned int k, float eps) {
  unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= b) return;
  const float* zr = z + (size_t)r * k;
  float* o = out + (size_t)r * (k + 3u);
  unsigned int label = y[r];
  if (label >= k) {
    for (unsigned int j = 0; j < k + 3u; j++) o[j] = __int_as_float(0x7fc00000);
    return;
  }
  float mx = __int_as_float(0xff800000);
  for (unsigned int j = 0; j < k; j++) mx = fmaxf(mx, zr[j]);
  float sum = 0.f;
  for (unsigned int j = 0; j < k; j++) {
    float e = expf(zr[j] - mx);
    o[j] = e;
    sum += e;
  }
  float lse = mx + logf(sum);
  float loss = (1.f - eps) * (lse - zr[label]);
  if (eps > 0.f) {
    float m = 0.f;
    for (unsigned int j = 0; j < k; j++) m += zr[j] - lse;
    loss -= eps * (m / (float)k);
  }
  float inv_b = 1.f / (float)b;
  unsigned int above = 0;
  for (unsigned int j = 0; j < k; j++) {
    float q = eps / (float)k + (j == label ? 1.f - eps : 0.f);
    o[j] = (o[j] / sum - q) * inv_b;
    if (zr[j] > zr[label]) above++;
  }
  o[k] = loss;
  o[k + 1u] = above == 0 ? 1.f : 0.f;
  o[k + 2u] = above < 5u ? 1.f : 0.f;
}
