"""A linear probe fitted outside runner on runner's own cached features, to check that a run's
test accuracy is what a standard logistic regression gets from the same features.

    python tests/reference/linear_probe.py CACHE_DIR [--pool-rows N]

CACHE_DIR is the `run.cache_dir` of one run with a separate test set (for example
experiments/fashion_vgg16.toml run with `--set run.cache_dir=/tmp/probe-cache`): it then holds
two entries, the training pool (train + validation) and the test set: the pool is the entry
with N rows (`--pool-rows`, the run's n_train + n_val), else the smaller one (a pool cut by
`limit` beside a whole test set). The probe is fitted on the
whole pool (runner trains on 90% of it and keeps 10% for validation), standardised, with
scikit-learn's L-BFGS logistic regression. Needs numpy and scikit-learn.
"""
import json
import os
import struct
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def read_entry(path):
    """The features and labels of a runner cache entry (a safetensors file)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name in ("features", "labels"):
        h = header[name]
        a, b = h["data_offsets"]
        dtype = {"F32": np.float32, "I64": np.int64}[h["dtype"]]
        out[name] = np.frombuffer(data[a:b], dtype=dtype).reshape(h["shape"])
    return out["features"].reshape(len(out["labels"]), -1), out["labels"]


def main():
    d = sys.argv[1]
    pool_rows = int(sys.argv[sys.argv.index("--pool-rows") + 1]) if "--pool-rows" in sys.argv else None
    entries = [read_entry(os.path.join(d, f)) for f in sorted(os.listdir(d)) if f.endswith(".safetensors")]
    if len(entries) != 2:
        sys.exit(f"expected 2 cache entries (pool and test) in {d}, found {len(entries)}")
    if pool_rows is None:
        (xp, yp), (xt, yt) = sorted(entries, key=lambda e: len(e[1]))
    else:
        pools = [e for e in entries if len(e[1]) == pool_rows]
        if len(pools) != 1:
            sys.exit(f"no single entry of {pool_rows} rows: {[len(e[1]) for e in entries]}")
        (xp, yp), (xt, yt) = pools[0], [e for e in entries if e is not pools[0]][0]
    scaler = StandardScaler().fit(xp)
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(scaler.transform(xp), yp)
    acc = (clf.predict(scaler.transform(xt)) == yt).mean()
    print(f"linear probe: fitted on {len(yp)} pool samples ({xp.shape[1]} features), test accuracy {acc:.4f} on {len(yt)}")


if __name__ == "__main__":
    main()
