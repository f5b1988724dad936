"""Deterministic weights and images shared by the golden tests.

The Rust side (`tests/common/mod.rs`) regenerates exactly the same numbers, so
no weights are ever stored. The formula uses only 32-bit integer arithmetic
(murmur3's fmix32), which numpy and Rust compute bit-identically:

    fmix32(x):  x ^= x >> 16; x *= 0x85EBCA6B; x ^= x >> 13; x *= 0xC2B2AE35; x ^= x >> 16
    unit(i, salt) = fmix32((i + salt * 0x9E3779B9) mod 2^32) / 2^32 - 0.5      in [-0.5, 0.5)

Tensor number k (0-based, in the architecture's layer order) with flat C-order
index i in the *seed's* layout (HWIO for convs, [in, out] for fc):

    W[i] = float32(unit(i, 2k + 1) * sqrt(24 / fan_in))   # uniform, std sqrt(2 / fan_in)
    b[i] = float32(unit(i, 2k + 2) * 0.2)
    fan_in = product of W's shape without its last axis

Image n (0-based) of size HxWx3, flat NHWC index i:

    pixel[i] = fmix32((i + (n + 1000) * 0x9E3779B9) mod 2^32) >> 24     (uint8)
"""
import numpy as np

M32 = np.uint64(0xFFFFFFFF)


def fmix32(x):
    x = np.asarray(x, dtype=np.uint64) & M32
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x85EBCA6B)) & M32
    x = x ^ (x >> np.uint64(13))
    x = (x * np.uint64(0xC2B2AE35)) & M32
    x = x ^ (x >> np.uint64(16))
    return x


def unit(n, salt):
    i = np.arange(n, dtype=np.uint64)
    h = fmix32(i + np.uint64((salt * 0x9E3779B9) & 0xFFFFFFFF))
    return h.astype(np.float64) / 4294967296.0 - 0.5


def weights(layers):
    """layers: list of (name, W shape, b length) in layer order."""
    out = {}
    for k, (name, wshape, blen) in enumerate(layers):
        fan_in = int(np.prod(wshape[:-1]))
        w = (unit(int(np.prod(wshape)), 2 * k + 1) * np.sqrt(24.0 / fan_in)).astype(np.float32)
        b = (unit(blen, 2 * k + 2) * 0.2).astype(np.float32)
        out[name] = [w.reshape(wshape), b]
    return out


def images(count, h, w):
    per = h * w * 3
    imgs = []
    for n in range(count):
        i = np.arange(per, dtype=np.uint64)
        x = fmix32(i + np.uint64(((n + 1000) * 0x9E3779B9) & 0xFFFFFFFF))
        imgs.append((x >> np.uint64(24)).astype(np.uint8).reshape(h, w, 3))
    return np.stack(imgs)


ALEXNET = [
    ("conv1", (11, 11, 3, 96), 96),
    ("conv2", (5, 5, 48, 256), 256),
    ("conv3", (3, 3, 256, 384), 384),
    ("conv4", (3, 3, 192, 384), 384),
    ("conv5", (3, 3, 192, 256), 256),
    ("fc6", (9216, 4096), 4096),
    ("fc7", (4096, 4096), 4096),
    ("fc8", (4096, 1000), 1000),
]


def _vgg(blocks):
    layers, cin = [], 3
    for b, (n, width) in enumerate(zip(blocks, [64, 128, 256, 512, 512])):
        for i in range(n):
            layers.append((f"conv{b + 1}_{i + 1}", (3, 3, cin, width), width))
            cin = width
    layers += [("fc6", (25088, 4096), 4096), ("fc7", (4096, 4096), 4096), ("fc8", (4096, 1000), 1000)]
    return layers


VGG16 = _vgg([2, 2, 3, 3, 3])
VGG19 = _vgg([2, 2, 4, 4, 4])


def torch_tensors(named_shapes):
    """The tensors of a PyTorch-defined network in PyTorch's layout, as runner's
    `weights::formula::torch_layout` computes them. named_shapes: (name, shape) in the model's
    state_dict order, without `num_batches_tracked`. Tensor k, u = unit(n, 2k + 1):
    conv/fc weights (rank >= 2) u * sqrt(24 / fan_in) with fan_in the product of the shape
    without its first axis; rank-1 weights and running variances 1 + u / 2; everything else
    u * 0.2."""
    out = {}
    for k, (name, shape) in enumerate(named_shapes):
        n = int(np.prod(shape)) if len(shape) else 1
        u = unit(n, 2 * k + 1)
        role = name.rsplit(".", 1)[-1]
        if role == "weight" and len(shape) >= 2:
            v = u * np.sqrt(24.0 / int(np.prod(shape[1:])))
        elif role in ("weight", "running_var"):
            v = 1.0 + u / 2.0
        else:
            v = u * 0.2
        out[name] = v.astype(np.float32).reshape(shape)
    return out
