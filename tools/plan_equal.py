#!/usr/bin/env python3
"""Checks that two in-silico plan files (docs/insilico.md) hold the same plan, read with h5py.

    tools/plan_equal.py A.h5 B.h5

Every dataset must be equal byte for byte (dtype, shape and bytes), every root attribute equal,
except what records how a plan was computed rather than what it is: `elapsed_s`, the path the twin
was given by (`twin`; the file itself is compared by `twin_digest`), and in the `options` JSON the
thread count, time limit and shard. Exits 0 and prints one line when they match;
exits 1 naming the first few differences otherwise.
"""
import json
import sys

import h5py
import numpy as np

HOW = {"elapsed_s", "twin"}
HOW_OPTIONS = {"threads", "time_limit_s", "shard"}


def datasets(f):
    out = {}
    f.visititems(lambda name, obj: out.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def attr(v):
    return v.decode() if isinstance(v, bytes) else v


def main(a_path, b_path):
    diffs = []
    with h5py.File(a_path, "r") as a, h5py.File(b_path, "r") as b:
        for k in sorted(set(a.attrs) | set(b.attrs)):
            if k in HOW:
                continue
            if k not in a.attrs or k not in b.attrs:
                diffs.append(f"attribute {k}: only in {'the first' if k in a.attrs else 'the second'}")
                continue
            va, vb = attr(a.attrs[k]), attr(b.attrs[k])
            if k == "options":
                va, vb = json.loads(va), json.loads(vb)
                for d in (va, vb):
                    for h in HOW_OPTIONS:
                        d.pop(h, None)
            if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
                same = np.array_equal(va, vb)
            else:
                same = va == vb
            if not same:
                diffs.append(f"attribute {k}: {va!r} vs {vb!r}"[:300])
        da, db = datasets(a), datasets(b)
        for k in sorted(set(da) | set(db)):
            if k not in da or k not in db:
                diffs.append(f"dataset {k}: only in {'the first' if k in da else 'the second'}")
                continue
            x, y = da[k][()], db[k][()]
            if x.dtype != y.dtype or x.shape != y.shape:
                diffs.append(f"dataset {k}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
            elif x.dtype.kind == "O":
                if list(x.ravel()) != list(y.ravel()):
                    diffs.append(f"dataset {k}: strings differ")
            elif x.tobytes() != y.tobytes():
                n = int(np.sum(x != y)) if x.dtype.kind != "f" else int(np.sum(x.view(np.uint8) != y.view(np.uint8)))
                diffs.append(f"dataset {k}: {n} values differ")
        n_entries = len(da["entries/rank"][()]) if "entries/rank" in da else 0
    if diffs:
        print(f"{a_path} and {b_path} differ:", *diffs[:10], sep="\n  ")
        return 1
    print(f"{a_path} = {b_path}: {len(da)} datasets ({n_entries} entries) byte for byte, attributes equal but elapsed_s, the twin's path and options.threads/time_limit_s/shard")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
