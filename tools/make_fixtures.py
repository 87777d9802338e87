#!/usr/bin/env python3
"""Parity fixtures for the twin runtime: runs ONNX twins/cores with onnxruntime on fixed inputs,
stepping the recurrent state explicitly (state_out.X -> state_in.X), and writes the inputs and
outputs so that `cargo test --test twin` can compare tract against onnxruntime without Python.

    pip install onnxruntime numpy
    python3 tools/make_fixtures.py onnx/reference_core.onnx onnx/reference_twin.onnx \
        --out tests/fixtures/twin --steps 24 --seed 7

For each MODEL it writes <stem>.json (shapes, onnxruntime version, which steps were kept) and
<stem>.stimulus.u8 [T,H,W], <stem>.behavior.f32 [T,K], <stem>.output.f32 [S, ...] (little endian,
S = the kept steps: every step of a twin's response; the first and last step of a core's feature
map to keep the files small).
"""
import argparse
import json
import os

import numpy as np
import onnxruntime as ort


def meta(sess):
    return dict(sess.get_modelmeta().custom_metadata_map)


def stimulus_clip(rng, t, h, w):
    """A moving 1/f-ish pattern with occasional gray frames, as 8-bit luminance."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.zeros((h, w))
    for _ in range(12):
        fy, fx = rng.normal(size=2) * 0.15
        base += np.cos(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi)) / (
            1 + 10 * np.hypot(fy, fx))
    frames = []
    for k in range(t):
        if k % 11 == 10:
            frames.append(np.full((h, w), 127.5))
            continue
        shifted = np.roll(base, shift=(k // 3, k), axis=(0, 1))
        frames.append(127.5 + 110 * shifted / (np.abs(base).max() + 1e-9))
    return np.clip(np.round(np.array(frames)), 0, 255).astype(np.uint8)


def run(path, out_dir, steps, seed):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    m = meta(sess)
    kind = m["twin.kind"]
    h, w = int(m["twin.stimulus_height"]), int(m["twin.stimulus_width"])
    channels = [c for c in m["twin.behavior_channels"].split(",") if c]
    rng = np.random.default_rng(seed)
    stim = stimulus_clip(rng, steps, h, w)
    beh = np.zeros((steps, len(channels)), dtype=np.float32)
    for i, c in enumerate(channels):
        if c == "running_speed":
            beh[:, i] = np.clip(np.cumsum(rng.normal(0, 3, steps)) + 8, 0, None)
        elif c == "pupil_diameter":
            beh[:, i] = 1.3 + 0.2 * np.sin(np.arange(steps) / 5)
    inputs = {i.name: i for i in sess.get_inputs()}
    states = {}
    for name, i in inputs.items():
        if name.startswith("state_in."):
            shape = [1] + [int(d) for d in i.shape[1:]]
            states[name[len("state_in."):]] = np.zeros(shape, dtype=np.float32)
    main = "response" if kind == "twin" else "features"
    out_names = [o.name for o in sess.get_outputs()]
    outs = []
    for k in range(steps):
        feed = {"stimulus": stim[k].astype(np.float32)[None, None]}
        if "behavior" in inputs:
            feed["behavior"] = beh[k][None]
        for s, v in states.items():
            feed["state_in." + s] = v
        res = dict(zip(out_names, sess.run(out_names, feed)))
        for s in states:
            states[s] = res["state_out." + s]
        outs.append(res[main][0])
    outs = np.array(outs, dtype=np.float32)
    kept = list(range(steps)) if kind == "twin" else [0, steps - 1]
    stem = os.path.splitext(os.path.basename(path))[0]
    stim.tofile(os.path.join(out_dir, stem + ".stimulus.u8"))
    beh.astype("<f4").tofile(os.path.join(out_dir, stem + ".behavior.f32"))
    outs[kept].astype("<f4").tofile(os.path.join(out_dir, stem + ".output.f32"))
    info = {
        "model": os.path.relpath(path, os.path.join(out_dir, "..", "..", "..")),
        "kind": kind,
        "steps": steps,
        "kept_steps": kept,
        "height": h,
        "width": w,
        "behavior_channels": channels,
        "output": main,
        "output_shape": list(outs.shape[1:]),
        "output_abs_max": float(np.abs(outs).max()),
        "output_std": float(outs.std()),
        "seed": seed,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }
    with open(os.path.join(out_dir, stem + ".json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"{path}: {kind}, {steps} steps, {main} {list(outs.shape[1:])}, "
          f"|max| {info['output_abs_max']:.4g} -> {out_dir}/{stem}.*")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--out", default="tests/fixtures/twin")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for p in a.models:
        run(p, a.out, a.steps, a.seed)


if __name__ == "__main__":
    main()
