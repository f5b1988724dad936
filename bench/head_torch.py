"""PyTorch side of bench/head.sh: the seed's GTSRB head (linear 4096 -> 43) trained with Adam
on 34,799 cached features, batch 128, one line per epoch. Same workload as benches/head_epoch.rs."""
import math, os, sys, time
import torch
import torch.nn as nn

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
n, d, k, bs = 34799, 4096, 43, 128
g = torch.Generator().manual_seed(1)
X = torch.rand(n, d, generator=g)
Y = torch.randint(0, k, (n,), generator=g)
lin = nn.Linear(d, k)
nn.init.trunc_normal_(lin.weight, std=0.01, a=-0.02, b=0.02)
nn.init.zeros_(lin.bias)
opt = torch.optim.Adam(lin.parameters(), lr=1e-3)
lossf = nn.CrossEntropyLoss()
for ep in range(epochs):
    perm = torch.randperm(n, generator=g)
    t = time.perf_counter()
    for i in range(0, n, bs):
        idx = perm[i:i + bs]
        loss = lossf(lin(X[idx]), Y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    print(f"torch head epoch {ep + 1}: train {time.perf_counter() - t:.4f} s, loss {loss.item():.4f}", flush=True)
