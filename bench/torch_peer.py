"""The PyTorch peer of runner's benchmarks: the same workloads, for ratios measured in one run.

usage: python bench/torch_peer.py WORKLOAD [options]
  alexnet  --batch B --images N [--device cpu|cuda] [--dtype f32|tf32|bf16]   images/s to fc7
  vgg16    --batch B --images N [...]                                          images/s to relu6
  resnet50 --batch B --images N [...]                    images/s to pre_logits (torchvision's)
  efficientnet_b0 --batch B --images N [...]             images/s to pre_logits (torchvision's)
  convnext_tiny --batch B --images N [...]               images/s to pre_logits (torchvision's)
  vit_b_16 --batch B --images N [...]                    images/s to pre_logits (torchvision's)
  head     --epochs E [--n 34799] [--device ...]           s per epoch, linear 4096 -> 43, Adam
  sweep    --epochs E --n N                                12 head configs, s in all
Prints one line per measurement: `torch WORKLOAD CONFIG: VALUE UNIT`.

AlexNet is the seed's variant (TF-port bvlc: SAME conv1, grouped conv2/4/5, TF's LRN with radius
2, alpha 2e-5, beta 0.75, bias 1); VGG16 is torchvision's to relu6. Random He-initialised weights:
speed does not depend on the values. Inputs are u8 images resized on the device to the network's
size, as runner does.
"""
import argparse, math, os, statistics, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class LRN_TF(nn.Module):
    # TF does not divide alpha by the window size; torch does, hence alpha * size.
    def forward(self, x):
        return F.local_response_norm(x, 5, alpha=2e-5 * 5, beta=0.75, k=1.0)


def alexnet_fc7():
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4, padding=4), nn.ReLU(inplace=True), LRN_TF(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True), LRN_TF(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
    )


def vgg16_relu6():
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(25088, 4096), nn.ReLU(inplace=True))


def resnet50_pre_logits():
    import torchvision

    m = torchvision.models.resnet50(weights=None)
    m.fc = nn.Identity()  # the pooled 2048-vector, runner's pre_logits
    return m


def efficientnet_b0_pre_logits():
    import torchvision

    m = torchvision.models.efficientnet_b0(weights=None)
    m.classifier = nn.Identity()  # the pooled 1280-vector, runner's pre_logits
    return m


def convnext_tiny_pre_logits():
    import torchvision

    m = torchvision.models.convnext_tiny(weights=None)
    m.classifier[2] = nn.Identity()  # the pooled, normalised 768-vector, runner's pre_logits
    return m


def vit_b_16_pre_logits():
    import torchvision

    m = torchvision.models.vit_b_16(weights=None)
    m.heads = nn.Identity()  # the class token after the final LayerNorm, runner's pre_logits
    return m


def he_init(m):
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
        if m.bias is not None:
            nn.init.uniform_(m.bias, -0.01, 0.01)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def extract(model, size, a):
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = a.dtype == "tf32"
        torch.backends.cudnn.allow_tf32 = a.dtype == "tf32"
    model.apply(he_init)
    model = model.to(dev, dtype).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (a.images, 32, 32, 3), dtype=torch.uint8, generator=g)
    if dev.type == "cuda":
        images = images.pin_memory()
    times = []
    with torch.inference_mode():
        for rep in range(a.runs):
            sync(dev)
            t = time.perf_counter()
            for i in range(0, a.images, a.batch):
                x = images[i:i + a.batch].to(dev, non_blocking=True).permute(0, 3, 1, 2).float()
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
                y = model(x.to(dtype))
            sync(dev)
            times.append(time.perf_counter() - t)
    best = statistics.median(times[1:] if len(times) > 1 else times)
    return a.images / best, best


def head(a):
    dev = torch.device(a.device)
    n, d, k, bs = a.n, 4096, 43, 128
    g = torch.Generator().manual_seed(1)
    X = torch.rand(n, d, generator=g).to(dev)
    Y = torch.randint(0, k, (n,), generator=g).to(dev)
    lin = nn.Linear(d, k).to(dev)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3)
    times = []
    for ep in range(a.epochs):
        perm = torch.randperm(n, device=dev)
        sync(dev)
        t = time.perf_counter()
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(lin(X[idx]), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:] if len(times) > 1 else times)


def sweep(a):
    """The 12-point head sweep of bench/cpu.sh: lr x hidden x optimizer on n cached 4096-d
    features (80/20 train/val split), `epochs` epochs each, validation after every epoch."""
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(2)
    n, d, k, bs = a.n, 4096, 43, 128
    X = torch.rand(n, d, generator=g).to(dev)
    Y = torch.randint(0, k, (n,), generator=g).to(dev)
    cut = n * 4 // 5
    t = time.perf_counter()
    for lr in (1e-3, 3e-3, 1e-2):
        for hidden in ([], [256]):
            for opt_name in ("adam", "sgd"):
                dims = [d] + hidden + [k]
                layers = []
                for i in range(len(dims) - 1):
                    layers.append(nn.Linear(dims[i], dims[i + 1]))
                    if i < len(dims) - 2:
                        layers.append(nn.ReLU())
                m = nn.Sequential(*layers).to(dev)
                opt = (torch.optim.Adam(m.parameters(), lr=lr) if opt_name == "adam"
                       else torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9))
                for ep in range(a.epochs):
                    perm = torch.randperm(cut, device=dev)
                    m.train()
                    for i in range(0, cut, bs):
                        idx = perm[i:i + bs]
                        loss = F.cross_entropy(m(X[idx]), Y[idx])
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                    m.eval()
                    with torch.inference_mode():
                        acc = (m(X[cut:]).argmax(1) == Y[cut:]).float().mean().item()
    sync(dev)
    return time.perf_counter() - t


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["alexnet", "vgg16", "resnet50", "efficientnet_b0", "convnext_tiny", "vit_b_16", "head", "sweep"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n", type=int, default=34799)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32", choices=["f32", "tf32", "bf16"])
    a = p.parse_args()
    if os.environ.get("THREADS"):
        torch.set_num_threads(int(os.environ["THREADS"]))
    torch.manual_seed(0)
    if a.workload == "sweep":
        print(f"torch sweep {a.device}: {sweep(a):.3f} s")
    elif a.workload == "head":
        s = head(a)
        print(f"torch head {a.device}: {s:.4f} s/epoch")
    else:
        model, size = {
            "alexnet": (alexnet_fc7, 227),
            "vgg16": (vgg16_relu6, 224),
            "resnet50": (resnet50_pre_logits, 224),
            "efficientnet_b0": (efficientnet_b0_pre_logits, 224),
            "convnext_tiny": (convnext_tiny_pre_logits, 224),
            "vit_b_16": (vit_b_16_pre_logits, 224),
        }[a.workload]
        model = model()
        ips, secs = extract(model, size, a)
        print(f"torch {a.workload} {a.device} {a.dtype} batch {a.batch}: {ips:.1f} images/s "
              f"({a.images} images in {secs:.3f} s)")
