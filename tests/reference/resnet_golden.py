"""Golden outputs of torchvision's ResNet-18 and ResNet-50 at every runner cut point, with the
weights of formula.torch_tensors (batch-norm scales, shifts and statistics that are not 0/1) at
the real widths and depths, for one 64x64 formula image.

    .venv/bin/python tests/reference/resnet_golden.py tests/fixtures/resnet_golden.npz

The image is normalised as torchvision's weights expect: (RGB / 255 - mean) / std with the
ImageNet mean and std. Outputs come from torchvision's create_feature_extractor at the nodes
runner names stem (maxpool), layer1..layer4, pre_logits (flatten) and logits (fc); maps are
stored in PyTorch's (C, H, W) order, as `<arch>/<cut>`. Also writes tests/fixtures/resnet_part.pth
(torch.save) and tests/fixtures/resnet_part.safetensors (safetensors' save_file): ResNet-18's
stem and layer1 with the formula's weights, num_batches_tracked included, for the readers.
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
NODES = {
    "maxpool": "stem",
    "layer1": "layer1",
    "layer2": "layer2",
    "layer3": "layer3",
    "layer4": "layer4",
    "flatten": "pre_logits",
    "fc": "logits",
}


def formula_model(name):
    model = getattr(torchvision.models, name)(weights=None).eval()
    sd = model.state_dict()
    named = [(k, tuple(v.shape)) for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    values = formula.torch_tensors(named)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()}, strict=False)
    return model


def main(out):
    torch.set_grad_enabled(False)
    img = formula.images(1, 64, 64).astype(np.float32)
    x = (img / np.float32(255.0) - MEAN) / STD
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    result = {"pixel_sum": np.array([int(formula.images(1, 64, 64).astype(np.int64).sum())])}
    for name in ["resnet18", "resnet50"]:
        model = formula_model(name)
        ext = create_feature_extractor(model, return_nodes=list(NODES))
        feats = ext(x)
        for node, cut in NODES.items():
            f = feats[node].numpy().astype(np.float32)
            result[f"{name}/{cut}"] = f.reshape(f.shape[0], -1)
            print(name, cut, f.shape, float(np.abs(f).mean()))
    np.savez_compressed(out, **result)
    # a reduced ResNet-18 state dict (stem + layer1) for the .pth and .safetensors readers
    part = {
        k: v
        for k, v in formula_model("resnet18").state_dict().items()
        if k.startswith(("conv1.", "bn1.", "layer1."))
    }
    here = os.path.dirname(out)
    torch.save(part, os.path.join(here, "resnet_part.pth"))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in part.items()}, os.path.join(here, "resnet_part.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
