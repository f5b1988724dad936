"""Golden outputs of torchvision's ConvNeXt-Tiny at every runner cut point, with the weights of
formula.torch_tensors (LayerNorm scales and shifts, layer scales and biases that are not 0/1) at
the real widths and depths, for one 64x64 formula image.

    .venv/bin/python tests/reference/convnext_golden.py tests/fixtures/convnext_golden.npz

The image is normalised as torchvision's weights expect: (RGB / 255 - mean) / std with the
ImageNet mean and std. Outputs come from torchvision's create_feature_extractor at features.0 ..
features.7, classifier.0 (the final LayerNorm of the pooled map: runner's pre_logits) and
classifier.2 (logits); maps in PyTorch's (C, H, W) order, as `convnext_tiny/<cut>`. Also
`convnext_tiny_names.txt` beside it: the state-dict names in order.
"""
import os
import sys

import numpy as np
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import formula  # noqa: E402
from efficientnet_golden import MEAN, STD, nchw, rows, with_formula, write_names  # noqa: E402

NODES = {f"features.{i}": f"features.{i}" for i in range(8)}
NODES.update({"classifier.0": "pre_logits", "classifier.2": "logits"})


def main(out):
    torch.set_grad_enabled(False)
    img = formula.images(1, 64, 64).astype(np.float32)
    result = {"pixel_sum": np.array([int(formula.images(1, 64, 64).astype(np.int64).sum())])}
    model = with_formula(torchvision.models.convnext_tiny(weights=None))
    x = nchw((img / np.float32(255.0) - MEAN) / STD)
    feats = create_feature_extractor(model, return_nodes=list(NODES))(x)
    for node, cut in NODES.items():
        result[f"convnext_tiny/{cut}"] = rows(feats[node])
        print(cut, tuple(feats[node].shape), float(feats[node].abs().mean()))
    np.savez_compressed(out, **result)
    write_names(model, os.path.join(os.path.dirname(out), "convnext_tiny_names.txt"))


if __name__ == "__main__":
    main(sys.argv[1])
