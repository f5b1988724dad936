"""Writes the same small VGG16 weights (conv1_1 and conv1_2 only: the first block) in three
formats, each by the library that owns it, for tests/weights_formats.rs:

  tests/fixtures/vgg_block1.npy   np.save of {layer: [W, b]} in tensorflow-vgg's layout (HWIO)
  tests/fixtures/vgg_block1.pth   torch.save of a torchvision-named state dict (OIHW)
  tests/fixtures/vgg_block1.onnx  an ONNX graph (onnx.helper) of the two Conv + Relu nodes, with
                                  the weights as initializers (OIHW), as tf2onnx and
                                  torch.onnx exports store them

runner must read all three as the same network (`backbone.output = "conv1_2"`: the files hold
nothing above it). Needs numpy, torch and onnx:

    python tests/reference/weights_fixtures.py
"""
import os

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures")

rng = np.random.RandomState(20261202)


def conv(cin, cout):
    w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin)) / 16).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    return w, b


w1, b1 = conv(3, 64)
w2, b2 = conv(64, 64)

# tensorflow-vgg's vgg16.npy: {name: [W (kh, kw, cin, cout), b]}
np.save(
    os.path.join(OUT, "vgg_block1.npy"),
    {
        "conv1_1": [w1.transpose(2, 3, 1, 0).copy(), b1],
        "conv1_2": [w2.transpose(2, 3, 1, 0).copy(), b2],
    },
    allow_pickle=True,
)

# torchvision's VGG16 state dict names: features.0 and features.2
torch.save(
    {
        "features.0.weight": torch.from_numpy(w1),
        "features.0.bias": torch.from_numpy(b1),
        "features.2.weight": torch.from_numpy(w2),
        "features.2.bias": torch.from_numpy(b2),
    },
    os.path.join(OUT, "vgg_block1.pth"),
)

nodes = [
    helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="block1_conv1", pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["c1"], ["r1"]),
    helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="block1_conv2", pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["c2"], ["y"]),
]
graph = helper.make_graph(
    nodes,
    "vgg_block1",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64, "H", "W"])],
    initializer=[
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ],
)
model = helper.make_model(graph, producer_name="runner-fixtures", opset_imports=[helper.make_opsetid("", 13)])
onnx.checker.check_model(model)
onnx.save(model, os.path.join(OUT, "vgg_block1.onnx"))
print("wrote vgg_block1.{npy,pth,onnx}")
