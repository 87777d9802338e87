#!/usr/bin/env python3
"""onnxruntime side of the twin benchmark: per-step latency (batch 1, state stepped explicitly)
with 1 thread and with all threads, and batch throughput, on the same model and inputs that
`rig twin bench` uses. Prints JSON shaped like `rig twin bench --json`.

    pip install onnxruntime numpy
    python3 tools/bench_ort.py onnx/reference_twin.onnx --steps 300 --batch 32
"""
import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def inputs_for(sess, batch):
    m = sess.get_modelmeta().custom_metadata_map
    h, w = int(m["twin.stimulus_height"]), int(m["twin.stimulus_width"])
    k = len([c for c in m["twin.behavior_channels"].split(",") if c])
    i = np.arange(h * w)
    stim = [(127.5 + 100.0 * np.sin((i + 3 * f) * 0.05)).astype(np.float32).reshape(h, w)
            for f in range(16)]
    states = {}
    has_beh = False
    for inp in sess.get_inputs():
        if inp.name.startswith("state_in."):
            states[inp.name] = np.zeros([batch] + [int(d) for d in inp.shape[1:]], np.float32)
        if inp.name == "behavior":
            has_beh = True
    beh = np.full((batch, k), 5.0, np.float32)
    return stim, beh if has_beh else None, states


def step_loop(sess, batch, steps):
    stim, beh, states = inputs_for(sess, batch)
    outs = [o.name for o in sess.get_outputs()]
    lat = []
    for i in range(steps + 20):
        feed = {"stimulus": np.repeat(stim[i % 16][None, None], batch, axis=0)}
        if beh is not None:
            feed["behavior"] = beh
        feed.update(states)
        t0 = time.perf_counter()
        res = dict(zip(outs, sess.run(outs, feed)))
        dt = time.perf_counter() - t0
        for s in list(states):
            states[s] = res["state_out." + s[len("state_in."):]]
        if i >= 20:
            lat.append(dt * 1e6)
    return np.array(lat)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    rep = {"model": a.model, "runtime": "onnxruntime " + ort.__version__, "step": []}
    for th in sorted({1, a.threads}):
        lat = step_loop(session(a.model, th), 1, a.steps)
        rep["step"].append({"threads": th, "mean_us": float(lat.mean()),
                            "p50_us": float(np.percentile(lat, 50)),
                            "p99_us": float(np.percentile(lat, 99))})
    reps = max(5, min(200, a.steps // a.batch))
    lat = step_loop(session(a.model, a.threads), a.batch, reps)
    rep["batch"] = a.batch
    rep["batch_threads"] = a.threads
    rep["batch_frames_per_s"] = float(a.batch / (lat.mean() / 1e6))
    rep["single_step_frames_per_s"] = float(1e6 / rep["step"][0]["mean_us"])
    print(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
