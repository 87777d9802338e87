#!/usr/bin/env python3
"""A suite2p plane folder's ROIs as a twinrig mask file (what `rig run --rois` and
`rig replay --rois` read).

suite2p keeps its ROIs in stat.npy, a pickled array of dicts (ypix, xpix, lam, ...), which only
Python reads robustly; `rig import rois` reads NWB files and points here for a plane folder.

usage: suite2p_rois.py PLANE_DIR --out MASKS.h5 [--cells-only] [--min-probability P] [--overwrite]

Reads stat.npy, iscell.npy (is cell, probability) and ops.npy (Ly, Lx: the frame size). ROI ids
are suite2p's row numbers in stat.npy, so they match its F.npy / iscell.npy rows. Writes
rois/ids (u32), rois/offsets (u64), rois/pixels (u32, y*Lx+x) and rois/weights (f32, lam).
"""

import argparse
import os
import sys

import h5py
import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plane_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cells-only", action="store_true")
    ap.add_argument("--min-probability", type=float, default=0.0)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()

    def fail(msg):
        sys.exit(f"suite2p_rois: error: {msg}")

    paths = {n: os.path.join(a.plane_dir, n + ".npy") for n in ("stat", "iscell", "ops")}
    for n in ("stat", "ops"):
        if not os.path.exists(paths[n]):
            fail(f"{paths[n]}: no such file (expected a suite2p plane folder)")
    if os.path.exists(a.out) and not a.overwrite:
        fail(f"{a.out}: exists (give --overwrite to replace it)")
    stat = np.load(paths["stat"], allow_pickle=True)
    ops = np.load(paths["ops"], allow_pickle=True).item()
    ly, lx = int(ops["Ly"]), int(ops["Lx"])
    iscell = np.load(paths["iscell"]) if os.path.exists(paths["iscell"]) else None
    if (a.cells_only or a.min_probability > 0) and iscell is None:
        fail(f"{paths['iscell']}: no such file (needed by --cells-only / --min-probability)")
    if iscell is not None and len(iscell) != len(stat):
        fail(f"{paths['iscell']}: {len(iscell)} rows, stat.npy has {len(stat)} ROIs")

    ids, offsets, pixels, weights = [], [0], [], []
    for i, s in enumerate(stat):
        if iscell is not None:
            if a.cells_only and iscell[i, 0] < 0.5:
                continue
            if iscell[i, 1] < a.min_probability:
                continue
        y, x, lam = np.asarray(s["ypix"]), np.asarray(s["xpix"]), np.asarray(s["lam"])
        keep = (y >= 0) & (y < ly) & (x >= 0) & (x < lx) & (lam > 0)
        flat = (y[keep].astype(np.int64) * lx + x[keep]).astype(np.uint32)
        order = np.argsort(flat, kind="stable")
        flat, w = flat[order], lam[keep][order].astype(np.float32)
        flat, first = np.unique(flat, return_index=True)
        if len(flat) == 0:
            continue
        ids.append(i)
        pixels.append(flat)
        weights.append(w[first])
        offsets.append(offsets[-1] + len(flat))
    if not ids:
        fail("no ROI left after --cells-only / --min-probability")

    tmp = a.out + ".partial"
    with h5py.File(tmp, "w") as f:
        f.attrs["frame_height"] = np.uint32(ly)
        f.attrs["frame_width"] = np.uint32(lx)
        f.attrs["source"] = os.path.abspath(a.plane_dir)
        g = f.create_group("rois")
        g["ids"] = np.asarray(ids, np.uint32)
        g["offsets"] = np.asarray(offsets, np.uint64)
        g["pixels"] = np.concatenate(pixels).astype(np.uint32)
        g["weights"] = np.concatenate(weights).astype(np.float32)
    os.replace(tmp, a.out)
    print(f"{a.out}: {len(ids)} of {len(stat)} ROIs, {offsets[-1]} pixels, frame {ly}x{lx}")


if __name__ == "__main__":
    main()
