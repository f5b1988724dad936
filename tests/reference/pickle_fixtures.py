"""Tiny pickled files in every flavour runner must read, written by real Python/numpy.

    python3 tests/reference/pickle_fixtures.py tests/fixtures/pickles

Run it once with numpy 1.x and once with numpy 2.x: file names carry the numpy
major version (numpy 1.x pickles name numpy.core.multiarray, 2.x numpy._core).
Every float array holds v[i] = i * 0.5 - 3 (flat C-order index i); see
tests/pickle_formats.rs for what each file must contain.

Flavours:
- npsave_*.npy   np.save(dict) (0-d object array, pickle protocol 3 in the .npy)
- py2_*.npy      np.save-style file whose pickle imitates Python 2 exactly: protocol 2,
                 every str/bytes as SHORT_BINSTRING/BINSTRING (as bvlc-alexnet.npy)
- dump_pN_*.p    pickle.dump(dict of arrays, protocol N), N in 2 (bytes via
                 _codecs.encode), 4, 5 (arrays via _frombuffer)
- train_*.p      a Udacity-style train.p: features uint8 (4,5,6,3), labels, sizes, coords
"""
import io
import os
import pickle
import struct
import sys

import numpy as np

MAJOR = np.__version__.split(".")[0]


def vals(shape, dtype):
    n = int(np.prod(shape))
    return (np.arange(n, dtype=np.float64) * 0.5 - 3).astype(dtype).reshape(shape)


def weights_dict():
    return {
        "conv1": [vals((2, 3, 4, 5), "<f4"), vals((5,), "<f4")],
        "fc6": [np.asfortranarray(vals((6, 7), ">f8")), vals((7,), ">f4")],
        "fc7": [np.asfortranarray(vals((3, 4), "<f4")), vals((4,), "<f8")],
    }


def train_dict(label_dtype):
    feats = (np.arange(4 * 5 * 6 * 3) % 256).astype(np.uint8).reshape(4, 5, 6, 3)
    return {
        "features": feats,
        "labels": np.array([0, 2, 1, 2], dtype=label_dtype),
        "sizes": np.array([[5, 6]] * 4, dtype=np.uint8),
        "coords": np.zeros((4, 4), dtype=np.uint16),
    }


class Py2Pickler(pickle._Pickler):
    """Python 2's cPickle at protocol 2: str (and bytes) are SHORT_BINSTRING/BINSTRING."""

    def _binstring(self, raw):
        n = len(raw)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + raw)

    def save_str(self, obj):
        self._binstring(obj.encode("latin1"))
        self.memoize(obj)

    def save_bytes(self, obj):
        self._binstring(obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[str] = save_str
    dispatch[bytes] = save_bytes


def npy_header(descr):
    # The header np.save writes for a 0-d object array (format 1.0).
    h = "{'descr': '%s', 'fortran_order': False, 'shape': (), }" % descr
    total = 10 + len(h) + 1
    h = h + " " * ((64 - total % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode("latin1")


def main(out):
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, f"npsave_np{MAJOR}.npy"), weights_dict(), allow_pickle=True)
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(np.array(weights_dict(), dtype=object))
    with open(os.path.join(out, f"py2_np{MAJOR}.npy"), "wb") as f:
        f.write(npy_header("|O") + buf.getvalue())
    for proto in (2, 4, 5):
        with open(os.path.join(out, f"dump_p{proto}_np{MAJOR}.p"), "wb") as f:
            pickle.dump(weights_dict(), f, protocol=proto)
    with open(os.path.join(out, f"train_np{MAJOR}.p"), "wb") as f:
        pickle.dump(train_dict(np.int32 if MAJOR == "1" else np.uint8), f, protocol=4)
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(train_dict(np.int64))
    with open(os.path.join(out, f"train_py2_np{MAJOR}.p"), "wb") as f:
        f.write(buf.getvalue())
    # sanity: Python reads back what it wrote
    d = np.load(os.path.join(out, f"py2_np{MAJOR}.npy"), allow_pickle=True, encoding="latin1").item()
    assert np.array_equal(d["fc6"][0], weights_dict()["fc6"][0])
    print("wrote", sorted(os.listdir(out)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/pickles")
