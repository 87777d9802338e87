#!/usr/bin/env python3
"""Export a PyTorch twin to the twinrig twin contract (docs/twin-contract.md).

rig steps a twin one imaging frame at a time and keeps its recurrent state *outside* the network:
every `state_in.X` input comes back as a `state_out.X` output. A PyTorch twin (fnn,
neuralpredictors, a Sensorium baseline...) usually keeps its state inside a loop over time; to
export it, write (or wrap it in) a module whose forward takes ONE frame and the state explicitly:

    forward(stimulus [B,1,H,W] luminance 0..255,
            behavior [B,K],
            *states  (each [B, ...]))  ->  (response [B,N] dF/F, *new_states)

`export_twin` traces that module with torch.onnx.export, names inputs/outputs per the contract,
makes the batch axis symbolic, writes the contract metadata (metadata_props) with the `onnx`
package, and (if onnxruntime is installed) checks that stepping the exported file reproduces
stepping the PyTorch module.

Worked example (a small ConvGRU-lite twin with a per-neuron readout, random weights):

    pip install torch onnx onnxruntime numpy
    python3 tools/export_torch_twin.py --example /tmp/example_twin.onnx
    rig twin info /tmp/example_twin.onnx     # contract, shapes, op support per backend

Prefer ops that tract's CUDA runtime covers (Conv, MatMul/Einsum, elementwise, Sigmoid/Tanh/Exp);
ConvTranspose, pooling, Resize, GridSample, GRU/LSTM (Scan), Elu and Softplus run on the CPU
there. The example therefore writes its gates with Conv + Sigmoid/Tanh instead of nn.GRU and uses
exp() as output nonlinearity.

Wrapping a model that loops over time (fnn, neuralpredictors): docs/twin-contract.md, "Writing a
twin from PyTorch", has the recipe. Files from either torch exporter load in rig as they are
(tests/torch_exports.rs); with `dynamo=True` use opset 18 or later.

torch is not needed to build or test rig; this script only runs where torch is installed.
"""
import argparse
import sys

CONTRACT_VERSION = 1
BEHAVIOR_CHANNELS = ("running_speed", "pupil_diameter", "eye_x", "eye_y")


def export_twin(module, path, *, height, width, state_shapes, behavior_channels, roi_ids,
                frame_rate_hz=30.0, opset=17, extra_metadata=None, check=True):
    """Exports `module` (one-frame step with explicit state) to `path`.

    state_shapes: dict name -> shape without the batch axis, in the order forward() takes them.
    roi_ids: ROI id of each output neuron (the session's ROI table ids), in output order.
    """
    import torch
    import onnx

    for c in behavior_channels:
        if c not in BEHAVIOR_CHANNELS:
            raise ValueError(f"behaviour channel {c!r}: expected some of {BEHAVIOR_CHANNELS}")
    names = list(state_shapes)
    module = module.eval()
    b = 2  # trace with batch 2 so that no size-1 axis gets baked in
    example = (
        torch.full((b, 1, height, width), 127.5),
        torch.zeros((b, len(behavior_channels))),
        *[torch.zeros((b, *state_shapes[n])) for n in names],
    )
    with torch.no_grad():
        outs = module(*example)
    if not isinstance(outs, (tuple, list)) or len(outs) != 1 + len(names):
        raise ValueError("forward must return (response, *new_states) with one new state per state")
    n_neurons = outs[0].shape[1]
    if len(roi_ids) != n_neurons:
        raise ValueError(f"roi_ids has {len(roi_ids)} entries, the response has {n_neurons} neurons")
    input_names = ["stimulus", "behavior"] + [f"state_in.{n}" for n in names]
    output_names = ["response"] + [f"state_out.{n}" for n in names]
    dynamic_axes = {n: {0: "batch"} for n in input_names + output_names}
    kwargs = dict(input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                  opset_version=opset, do_constant_folding=True)
    try:
        # The TorchScript exporter honours dynamic_axes and input/output names exactly
        # (torch >= 2.9 defaults to the dynamo exporter).
        torch.onnx.export(module, example, path, dynamo=False, **kwargs)
    except TypeError:  # torch < 2.5 has no `dynamo` argument
        torch.onnx.export(module, example, path, **kwargs)
    if not behavior_channels:
        print("note: no behaviour channels; the contract then forbids a `behavior` input. "
              "Export a module that does not take one.", file=sys.stderr)
    m = onnx.load(path)
    meta = {
        "twin.kind": "twin",
        "twin.contract_version": str(CONTRACT_VERSION),
        "twin.frame_rate_hz": str(frame_rate_hz),
        "twin.stimulus_height": str(height),
        "twin.stimulus_width": str(width),
        "twin.behavior_channels": ",".join(behavior_channels),
        "twin.n_neurons": str(n_neurons),
        "twin.roi_ids": ",".join(str(int(i)) for i in roi_ids),
    }
    meta.update(extra_metadata or {})
    onnx.helper.set_model_props(m, meta)
    onnx.checker.check_model(m)
    onnx.save(m, path)
    if check:
        _check_with_onnxruntime(module, path, example, names)
    return path


def _check_with_onnxruntime(module, path, example, names, steps=5):
    try:
        import numpy as np
        import onnxruntime as ort
        import torch
    except ImportError:
        print("onnxruntime not installed: skipped the parity check", file=sys.stderr)
        return
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    g = torch.Generator().manual_seed(0)
    stim0, beh0, *states_t = example
    states_o = [s.numpy() for s in states_t]
    worst = scale = 0.0
    for _ in range(steps):
        stim = torch.rand(stim0.shape, generator=g) * 255
        beh = torch.rand(beh0.shape, generator=g) * 10
        with torch.no_grad():
            ref = module(stim, beh, *states_t)
        feed = {"stimulus": stim.numpy(), "behavior": beh.numpy()}
        feed.update({f"state_in.{n}": s for n, s in zip(names, states_o)})
        res = dict(zip(out_names, sess.run(out_names, feed)))
        worst = max(worst, float(np.abs(res["response"] - ref[0].numpy()).max()))
        scale = max(scale, float(np.abs(ref[0].numpy()).max()))
        states_t = list(ref[1:])
        states_o = [res[f"state_out.{n}"] for n in names]
    print(f"onnxruntime vs torch over {steps} stepped frames: max abs error {worst:.3g} "
          f"(output scale {scale:.3g})")
    if worst > 1e-3 * max(scale, 1e-6):
        raise SystemExit("parity check failed")


def example_twin(height=36, width=64, channels=16, neurons=50):
    """A small recurrent twin: conv core, ConvGRU-lite stage with explicit state, point readout."""
    import torch
    from torch import nn

    class ExampleTwin(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, channels, 9, stride=2, padding=4)
            self.gates = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1)
            fh, fw = (height + 1) // 2, (width + 1) // 2
            self.readout_space = nn.Parameter(torch.randn(neurons, fh * fw) * 0.01)
            self.readout_feat = nn.Parameter(torch.randn(channels, neurons) * 0.1)
            self.behavior = nn.Linear(2, neurons)

        def forward(self, stimulus, behavior, h):
            x = torch.tanh(self.conv(stimulus * (2.0 / 255.0) - 1.0))
            z, r = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
            h_new = (1 - z) * h + z * torch.tanh(x + r * h)       # ConvGRU-lite
            f = h_new.flatten(2)                                    # [B, C, P]
            per = torch.matmul(f, self.readout_space.t())          # [B, C, N]
            drive = (per * self.readout_feat).sum(1)               # [B, N]
            return torch.exp(drive + self.behavior(behavior)), h_new

    fh, fw = (height + 1) // 2, (width + 1) // 2
    return ExampleTwin(), {"core": (channels, fh, fw)}, neurons


def main():
    ap = argparse.ArgumentParser(description="Export a PyTorch twin to the twinrig contract.")
    ap.add_argument("--example", metavar="OUT.onnx", help="export the built-in example twin")
    a = ap.parse_args()
    if not a.example:
        ap.print_help()
        print("\nFrom your own code: from export_torch_twin import export_twin", file=sys.stderr)
        return
    import torch
    torch.manual_seed(0)
    module, states, n = example_twin()
    export_twin(module, a.example, height=36, width=64, state_shapes=states,
                behavior_channels=["running_speed", "pupil_diameter"], roi_ids=list(range(n)),
                extra_metadata={"twin.provenance": "tools/export_torch_twin.py --example"})
    print(f"wrote {a.example}")


if __name__ == "__main__":
    main()
