"""Golden outputs of torchvision's ViT-B/16 at every runner cut point, with the weights of
formula.torch_tensors (LayerNorm scales and shifts, tokens and embeddings that are not 0/1) at the
real width and depth, for one 224x224 formula image (the position embeddings fix the size).

    .venv/bin/python tests/reference/vit_golden.py tests/fixtures/vit_golden.npz

The image is normalised as torchvision's weights expect: (RGB / 255 - mean) / std with the
ImageNet mean and std. Outputs come from torchvision's create_feature_extractor at
encoder.layers.encoder_layer_0 .. 11 (runner's block0 .. block11) and encoder.ln (pre_logits is
its class token), and the model's own output (logits). A block's whole sequence is 197 x 768
values; the fixture keeps what a head reads and a sample of the rest: `vit_b_16/<block>/class`
(the class token), `/avg` (the mean of the 196 patch tokens) and `/tokens` (tokens 0, 1, 57, 196,
in that order). Also `vit_b_16_names.txt` beside it: the state-dict names in order.
"""
import os
import sys

import numpy as np
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import formula  # noqa: E402
from efficientnet_golden import MEAN, STD, nchw, with_formula, write_names  # noqa: E402

SAMPLE = [0, 1, 57, 196]


def main(out):
    torch.set_grad_enabled(False)
    img = formula.images(1, 224, 224).astype(np.float32)
    result = {"pixel_sum": np.array([int(formula.images(1, 224, 224).astype(np.int64).sum())])}
    model = with_formula(torchvision.models.vit_b_16(weights=None))
    x = nchw((img / np.float32(255.0) - MEAN) / STD)
    nodes = [f"encoder.layers.encoder_layer_{i}" for i in range(12)] + ["encoder.ln"]
    feats = create_feature_extractor(model, return_nodes=nodes)(x)
    for i in range(12):
        t = feats[f"encoder.layers.encoder_layer_{i}"][0].numpy().astype(np.float32)
        result[f"vit_b_16/block{i}/class"] = t[0]
        result[f"vit_b_16/block{i}/avg"] = t[1:].mean(0)
        result[f"vit_b_16/block{i}/tokens"] = t[SAMPLE]
        print(f"block{i}", t.shape, float(np.abs(t).mean()))
    result["vit_b_16/pre_logits"] = feats["encoder.ln"][0, 0].numpy().astype(np.float32)
    result["vit_b_16/logits"] = model(x)[0].numpy().astype(np.float32)
    np.savez_compressed(out, **result)
    write_names(model, os.path.join(os.path.dirname(out), "vit_b_16_names.txt"))


if __name__ == "__main__":
    main(sys.argv[1])
