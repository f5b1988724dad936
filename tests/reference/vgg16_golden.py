"""Golden outputs of tensorflow-vgg's VGG16 (machrisaa/tensorflow-vgg vgg16.py, the seed's
flowers backbone), built op for op in TensorFlow, with the weights and images of formula.py.

    .venv/bin/python tests/reference/vgg16_golden.py tests/fixtures/vgg16_golden.npz

Two 224x224 images (formula.images(2, 224, 224)) are fed as utils.load_image gives them (RGB
in [0, 1]); writes pool5 (NHWC), relu6 and relu7, plus pixel sums to check the image formula.
"""
import os
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import formula  # noqa: E402

VGG_MEAN = [103.939, 116.779, 123.68]


def build(rgb, net):
    rgb_scaled = rgb * 255.0
    red, green, blue = tf.split(axis=3, num_or_size_splits=3, value=rgb_scaled)
    bgr = tf.concat(axis=3, values=[blue - VGG_MEAN[0], green - VGG_MEAN[1], red - VGG_MEAN[2]])

    def conv(x, name):
        c = tf.nn.conv2d(x, tf.constant(net[name][0]), [1, 1, 1, 1], padding="SAME")
        return tf.nn.relu(tf.nn.bias_add(c, tf.constant(net[name][1])))

    def pool(x):
        return tf.nn.max_pool(x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")

    def fc(x, name):
        dim = int(np.prod(x.shape[1:]))
        return tf.nn.bias_add(tf.matmul(tf.reshape(x, [-1, dim]), net[name][0]), net[name][1])

    x = bgr
    for b, n in enumerate([2, 2, 3, 3, 3]):
        for i in range(n):
            x = conv(x, f"conv{b + 1}_{i + 1}")
        x = pool(x)
    pool5 = x
    relu6 = tf.nn.relu(fc(pool5, "fc6"))
    relu7 = tf.nn.relu(fc(relu6, "fc7"))
    return {"pool5": pool5, "relu6": relu6, "relu7": relu7}


def main(out):
    net = formula.weights(formula.VGG16)
    imgs = formula.images(2, 224, 224)
    res = {k: v.numpy().astype(np.float32) for k, v in build(tf.constant(imgs.astype(np.float32) / 255.0), net).items()}
    res["pixel_sum"] = np.array([int(im.astype(np.int64).sum()) for im in imgs], np.int64)
    np.savez(out, **res)
    for k, v in sorted(res.items()):
        print(k, v.shape, v.dtype, float(np.abs(v).mean()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/vgg16_golden.npz")
