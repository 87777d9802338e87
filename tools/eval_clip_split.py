#!/usr/bin/env python3
"""Correlation of a twin's predictions with a simulated session's ground-truth calcium, split by
clip: clips the readout was fit on (clip index < --seen) vs clips it never saw.

    rig twin predict TWIN.onnx --session TEST.h5 --out PRED.h5
    python3 tools/eval_clip_split.py TEST.h5 PRED.h5 --seen 24      # pip install h5py numpy
"""
import argparse

import h5py
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("session")
ap.add_argument("predictions")
ap.add_argument("--seen", type=int, default=24, help="clips 0..seen-1 were in the fit")
a = ap.parse_args()
s = h5py.File(a.session, "r")
p = h5py.File(a.predictions, "r")
pred = p["predictions/response"][:]
ids = list(p["predictions/roi_id"][:].astype(int))
gid = list(s["ground_truth/neurons/roi_id"][:].astype(int))
y = s["ground_truth/calcium"][:][:, [gid.index(i) for i in ids]]
ft = s["imaging/timestamps"][: pred.shape[0]]
trials = s["stimulus/trials"]
st, en, cl = trials["start"][:], trials["end"][:], trials["clip"][:]


def mask(sel):
    m = np.zeros(len(ft), bool)
    for a0, b0, c in zip(st, en, cl):
        if sel(c):
            m[(ft >= a0 - 1e-9) & (ft < b0 - 1e-9)] = True
    return m


for name, m in [("seen clips", mask(lambda c: c < a.seen)), ("unseen clips", mask(lambda c: c >= a.seen))]:
    r = [np.corrcoef(pred[m, j], y[m, j])[0, 1] for j in range(pred.shape[1])]
    print(f"{name}: {m.sum()} frames, mean correlation {np.nanmean(r):.3f}")
