#!/usr/bin/env python3
"""Writes the PyTorch-export fixtures of tests/torch_exports.rs: small twins exported by real torch.

    pip install torch onnx onnxscript onnxruntime numpy      # not needed by `make test`
    python3 tools/make_torch_fixtures.py tests/fixtures/torch
    python3 tools/make_torch_fixtures.py --bench DIR     # bigger read-outs for tools/bench_compare.sh

Each twin is a one-frame step with explicit state (the twin contract, docs/twin-contract.md),
written with the patterns labs' twins use: tools/export_torch_twin.py's example (ConvGRU-lite, exp
output); a grid_sample read-out at learned positions followed by squeeze(-1), softplus output
(zeros padding, and border padding with align_corners); one whose grid moves with behaviour;
BatchNorm in eval mode, ELU, view/unsqueeze and an LSTMCell step; a GRUCell step with exp output.
They are exported by tools/export_torch_twin.py's export_twin and by both torch.onnx exporters
directly (TorchScript-based `dynamo=False` and the default `dynamo=True`), at opsets 17 to 20, with a symbolic or a fixed batch, one with its weights in an
external-data file, and nothing is edited afterwards but the contract's metadata. Beside each
file, onnxruntime's outputs for 6 stepped frames from recorded inputs (stimulus frames as u8,
behaviour and responses as little-endian f32) and an entry in manifest.json; the tests step rig
on the same inputs and compare, without torch.
manifest.json records the torch, onnx and onnxruntime versions that made them.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_torch_twin import (  # noqa: E402
    BEHAVIOR_CHANNELS, CONTRACT_VERSION, example_twin, export_twin)

H, W = 36, 64
STEPS = 6


def modules():
    import torch
    from torch import nn
    import torch.nn.functional as F

    class GridSampleTwin(nn.Module):
        """Conv core; each neuron reads the feature map at a learned position (grid_sample, as
        neuralpredictors' and fnn's read-outs do), then a per-neuron feature weight; softplus."""

        def __init__(self, c=8, n=24, padding="zeros", align=False):
            super().__init__()
            self.padding, self.align = padding, align
            self.conv = nn.Conv2d(1, c, 5, stride=2, padding=2)
            self.mix = nn.Conv2d(2 * c, c, 3, padding=1)
            self.grid = nn.Parameter(torch.rand(1, n, 1, 2) * 1.6 - 0.8)
            self.feat = nn.Parameter(torch.randn(c, n) * 0.3)
            self.beh = nn.Linear(2, n)

        def forward(self, stimulus, behavior, h):
            x = torch.relu(self.conv(stimulus / 127.5 - 1.0))
            h_new = torch.tanh(self.mix(torch.cat([x, h], 1)))
            g = self.grid.expand(stimulus.shape[0], -1, -1, -1)
            r = F.grid_sample(h_new, g, mode="bilinear", padding_mode=self.padding,
                              align_corners=self.align)
            r = r.squeeze(-1)  # [B, C, N]
            drive = (r * self.feat).sum(1)
            return F.softplus(drive + self.beh(behavior)), h_new

    class MovingGridTwin(GridSampleTwin):
        """A data-dependent grid: positions shift with the eye (behaviour), as fnn's read-out
        does with eye position; the rewrite must leave it to tract."""

        def __init__(self):
            super().__init__(n=10)
            self.shift = nn.Linear(2, 2)

        def forward(self, stimulus, behavior, h):
            x = torch.relu(self.conv(stimulus / 127.5 - 1.0))
            h_new = torch.tanh(self.mix(torch.cat([x, h], 1)))
            g = torch.tanh(self.grid + 0.2 * self.shift(behavior)[:, None, None, :])
            r = F.grid_sample(h_new, g, mode="bilinear", padding_mode="zeros", align_corners=False)
            drive = (r.flatten(2) * self.feat).sum(1)
            return F.softplus(drive + self.beh(behavior)), h_new

    class LstmBnTwin(nn.Module):
        """Conv + BatchNorm (eval) + ELU, pooled and flattened with view, one LSTMCell step with
        explicit (h, c), ELU + 1 output."""

        def __init__(self, c=6, hid=20, n=16):
            super().__init__()
            self.conv = nn.Conv2d(1, c, 7, stride=4, padding=3)
            self.bn = nn.BatchNorm2d(c)
            self.pool = nn.AdaptiveAvgPool2d((3, 4))
            self.cell = nn.LSTMCell(c * 12 + 2, hid)
            self.out = nn.Linear(hid, n)

        def forward(self, stimulus, behavior, h, c):
            x = F.elu(self.bn(self.conv(stimulus / 255.0)))
            x = self.pool(x).view(x.shape[0], -1)
            h2, c2 = self.cell(torch.cat([x, behavior.unsqueeze(1).squeeze(1)], 1), (h, c))
            return F.elu(self.out(h2)) + 1.0, h2, c2

    class GruCellTwin(nn.Module):
        """Strided conv features flattened, one GRUCell step, exp output."""

        def __init__(self, c=4, hid=24, n=12):
            super().__init__()
            self.conv = nn.Conv2d(1, c, 8, stride=8)
            self.cell = nn.GRUCell(c * (H // 8) * (W // 8), hid)
            self.out = nn.Linear(hid + 2, n)

        def forward(self, stimulus, behavior, h):
            x = torch.sigmoid(self.conv(stimulus / 255.0 - 0.5)).flatten(1)
            h2 = self.cell(x, h)
            return torch.exp(0.5 * self.out(torch.cat([h2, behavior], 1)) - 1.0), h2

    def bn_stats(m):
        # Eval-mode BatchNorm with non-trivial running statistics, as a trained model has.
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.data.uniform_(0.5, 1.5)
                mod.bias.data.uniform_(-0.3, 0.3)
        return m

    ex, ex_states, _ = example_twin(height=H, width=W, channels=8, neurons=20)
    return {
        "example": (ex, ex_states),
        "gridsample": (GridSampleTwin(), {"core": (8, H // 2, W // 2)}),
        "lstm_bn": (bn_stats(LstmBnTwin()), {"h": (20,), "c": (20,)}),
        "grucell": (GruCellTwin(), {"h": (24,)}),
        # Created after the others so that their random weights stay as they were.
        "gridsample_border": (GridSampleTwin(padding="border", align=True),
                              {"core": (8, H // 2, W // 2)}),
        "moving_grid": (MovingGridTwin(), {"core": (8, H // 2, W // 2)}),
    }


# (module, exporter, opset, batch, external data): every module through both exporters, every
# opset 17-20 at least once, symbolic and fixed batches, one external-data file. The dynamo
# exporter starts at opset 18: at 17, torch 2.15 writes Split with `num_outputs` (an opset-18
# attribute), a model onnxruntime and onnx.checker refuse.
CASES = [
    ("example", "export_twin", 17, "symbolic", False),
    ("example", "torchscript", 18, "fixed", False),
    ("example", "dynamo", 20, "symbolic", False),
    ("gridsample", "torchscript", 17, "symbolic", False),
    ("gridsample", "torchscript", 18, "fixed", False),
    ("gridsample", "dynamo", 19, "symbolic", False),
    ("lstm_bn", "torchscript", 19, "symbolic", False),
    ("lstm_bn", "dynamo", 18, "fixed", False),
    ("lstm_bn", "dynamo", 20, "symbolic", True),
    ("grucell", "torchscript", 20, "fixed", False),
    ("grucell", "dynamo", 18, "symbolic", False),
    ("gridsample_border", "dynamo", 18, "symbolic", False),
    ("moving_grid", "torchscript", 17, "symbolic", False),
]


def export(module, states, path, exporter, opset, batch, external):
    import onnx
    import torch

    names = list(states)
    b = 2 if batch == "symbolic" else 1
    example = (
        torch.full((b, 1, H, W), 127.5),
        torch.zeros((b, 2)),
        *[torch.zeros((b, *states[n])) for n in names],
    )
    inputs = ["stimulus", "behavior"] + [f"state_in.{n}" for n in names]
    outputs = ["response"] + [f"state_out.{n}" for n in names]
    kw = dict(input_names=inputs, output_names=outputs, opset_version=opset)
    if exporter == "export_twin":
        # tools/export_torch_twin.py exactly as a lab would call it.
        n_out = int(module(*example)[0].shape[1])
        export_twin(module, path, height=H, width=W, state_shapes=states,
                    behavior_channels=list(BEHAVIOR_CHANNELS[:2]), roi_ids=list(range(n_out)),
                    opset=opset, extra_metadata={
                        "twin.provenance": f"tools/export_torch_twin.py export_twin, torch {torch.__version__}"})
        return names, n_out
    if exporter == "torchscript":
        if batch == "symbolic":
            kw["dynamic_axes"] = {n: {0: "batch"} for n in inputs + outputs}
        torch.onnx.export(module, example, path, dynamo=False, do_constant_folding=True, **kw)
    else:
        if batch == "symbolic":
            d = torch.export.Dim("batch", min=1, max=1024)
            kw["dynamic_shapes"] = tuple({0: d} for _ in inputs)
        torch.onnx.export(module, example, path, dynamo=True, external_data=False, **kw)
    m = onnx.load(path)
    n_out = int(module(*example)[0].shape[1])
    onnx.helper.set_model_props(m, {
        "twin.kind": "twin",
        "twin.contract_version": str(CONTRACT_VERSION),
        "twin.frame_rate_hz": "30",
        "twin.stimulus_height": str(H),
        "twin.stimulus_width": str(W),
        "twin.behavior_channels": ",".join(BEHAVIOR_CHANNELS[:2]),
        "twin.n_neurons": str(n_out),
        "twin.roi_ids": ",".join(str(i) for i in range(n_out)),
        "twin.provenance": f"tools/make_torch_fixtures.py: torch {torch.__version__} {exporter} exporter, opset {opset}, {batch} batch",
    })
    if os.path.exists(path + ".data"):
        os.remove(path + ".data")
    if external:
        onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=os.path.basename(path) + ".data", size_threshold=1024)
    else:
        onnx.save(m, path)
    return names, n_out


def reference(path, names, states, seed):
    """onnxruntime's responses and final states over STEPS frames from recorded inputs."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    stim = np.round(rng.uniform(0, 255, (STEPS, 1, 1, H, W))).astype(np.float32)
    beh = rng.uniform(0, 3, (STEPS, 1, 2)).astype(np.float32)
    st = {n: np.zeros((1, *states[n]), np.float32) for n in names}
    resp = []
    for t in range(STEPS):
        feed = {"stimulus": stim[t], "behavior": beh[t]}
        feed.update({f"state_in.{n}": st[n] for n in names})
        out = sess.run(None, feed)
        got = dict(zip([o.name for o in sess.get_outputs()], out))
        resp.append(got["response"][0])
        st = {n: got[f"state_out.{n}"] for n in names}
    return stim, beh, np.stack(resp), st


def main(out_dir):
    import onnx
    import onnxruntime
    import torch

    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    mods = modules()
    entries = []
    for i, (name, exporter, opset, batch, external) in enumerate(CASES):
        module, states = mods[name]
        module.eval()
        stem = f"{name}_{exporter}_op{opset}_{batch}{'_extdata' if external else ''}"
        path = os.path.join(out_dir, stem + ".onnx")
        with torch.no_grad():
            names, n_out = export(module, states, path, exporter, opset, batch, external)
        stim, beh, resp, st = reference(path, names, states, seed=100 + i)
        stim.astype(np.uint8).tofile(os.path.join(out_dir, stem + ".stimulus.u8"))
        beh.tofile(os.path.join(out_dir, stem + ".behavior.f32"))
        resp.astype(np.float32).tofile(os.path.join(out_dir, stem + ".response.f32"))
        entries.append({
            "file": stem + ".onnx", "module": name, "exporter": exporter, "opset": opset,
            "batch": batch, "external_data": external, "steps": STEPS, "neurons": n_out,
            "behavior_channels": 2,
        })
        print(f"{stem}: {os.path.getsize(path)} bytes, {n_out} neurons", file=sys.stderr)
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump({
            "made_by": "tools/make_torch_fixtures.py",
            "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "height": H, "width": W,
            "fixtures": entries,
        }, f, indent=1)
        f.write("\n")


def bench_models(out_dir):
    """GridSample twins for tools/bench_compare.sh (not committed): the read-out at 200 neurons x
    16 channels and at 8,000 neurons x 16 channels, TorchScript exporter, symbolic batch."""
    import torch

    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(1)
    mods = modules()
    grid_twin = type(mods["gridsample"][0])
    for n in (200, 8000):
        path = os.path.join(out_dir, f"gridsample_{n}.onnx")
        with torch.no_grad():
            export(grid_twin(c=16, n=n).eval(), {"core": (16, H // 2, W // 2)}, path,
                   "torchscript", 17, "symbolic", False)
        print(path)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bench":
        bench_models(sys.argv[2])
    elif len(sys.argv) == 2:
        main(sys.argv[1])
    else:
        sys.exit(__doc__)
