"""Golden outputs of the seed's AlexNet graph (udacity/CarND-Alexnet-Feature-Extraction
alexnet.py), built op for op in TensorFlow, with the weights and images of formula.py.

    python3 -m venv .venv && .venv/bin/pip install tensorflow-cpu numpy
    .venv/bin/python tests/reference/alexnet_golden.py tests/fixtures/alexnet_golden.npz

Writes, for 3 images of 32x32 (through the seed's tf.image.resize_images to 227x227,
i.e. TF1 bilinear, align_corners=False, no half-pixel centres) and 2 images of 227x227:
pool5 (NHWC, as TF has it), fc6, fc7, fc8, plus pixel sums to check the image formula.
"""
import os
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import formula  # noqa: E402


def conv(inp, kernel, biases, s_h, s_w, padding="VALID", group=1):
    # alexnet.py's conv(): split input and kernel (along the output axis) into groups.
    convolve = lambda i, k: tf.nn.conv2d(i, k, [1, s_h, s_w, 1], padding=padding)
    if group == 1:
        c = convolve(inp, kernel)
    else:
        input_groups = tf.split(inp, group, 3)
        kernel_groups = tf.split(kernel, group, 3)
        c = tf.concat([convolve(i, k) for i, k in zip(input_groups, kernel_groups)], 3)
    return tf.nn.bias_add(c, biases)


def lrn(x):
    return tf.nn.local_response_normalization(x, depth_radius=2, alpha=2e-05, beta=0.75, bias=1.0)


def maxpool(x):
    return tf.nn.max_pool2d(x, ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1], padding="VALID")


def alexnet(x, net):
    c = lambda n: (tf.constant(net[n][0]), tf.constant(net[n][1]))
    conv1 = tf.nn.relu(conv(x, *c("conv1"), 4, 4, padding="SAME", group=1))
    pool1 = maxpool(lrn(conv1))
    conv2 = tf.nn.relu(conv(pool1, *c("conv2"), 1, 1, padding="SAME", group=2))
    pool2 = maxpool(lrn(conv2))
    conv3 = tf.nn.relu(conv(pool2, *c("conv3"), 1, 1, padding="SAME", group=1))
    conv4 = tf.nn.relu(conv(conv3, *c("conv4"), 1, 1, padding="SAME", group=2))
    conv5 = tf.nn.relu(conv(conv4, *c("conv5"), 1, 1, padding="SAME", group=2))
    pool5 = maxpool(conv5)
    flat = tf.reshape(pool5, [-1, int(np.prod(pool5.shape[1:]))])
    fc6 = tf.nn.relu(tf.matmul(flat, net["fc6"][0]) + net["fc6"][1])
    fc7 = tf.nn.relu(tf.matmul(fc6, net["fc7"][0]) + net["fc7"][1])
    fc8 = tf.matmul(fc7, net["fc8"][0]) + net["fc8"][1]
    return {"pool5": pool5, "fc6": fc6, "fc7": fc7, "fc8": fc8}


def main(out):
    net = formula.weights(formula.ALEXNET)
    res = {}
    small = formula.images(3, 32, 32)
    x = tf.compat.v1.image.resize_images(tf.constant(small.astype(np.float32)), (227, 227))
    for k, v in alexnet(x, net).items():
        res[f"s32_{k}"] = v.numpy().astype(np.float32)
    res["s32_pixel_sum"] = np.array([int(im.astype(np.int64).sum()) for im in small], np.int64)
    full = formula.images(2, 227, 227)
    for k, v in alexnet(tf.constant(full.astype(np.float32)), net).items():
        res[f"s227_{k}"] = v.numpy().astype(np.float32)
    res["s227_pixel_sum"] = np.array([int(im.astype(np.int64).sum()) for im in full], np.int64)
    res["tf_version"] = np.frombuffer(tf.__version__.encode(), np.uint8)
    np.savez(out, **res)
    for k, v in sorted(res.items()):
        print(k, v.shape, v.dtype)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/alexnet_golden.npz")
