#!/usr/bin/env python3
"""Check an NWB file written by `rig export nwb` the way a lab would receive it.

Usage: check_nwb.py FILE.nwb [EXPECT.json]

1. pynwb reads it (NWBHDF5IO) with every warning turned into an error;
2. pynwb.validate finds no errors (against pynwb's own schema: the file caches none);
3. nwbinspector reports nothing CRITICAL and no BEST_PRACTICE_VIOLATION (the rest is printed);
4. with EXPECT.json (the `--json` summary of `rig export nwb`, plus any extra keys below), the
   contents match what `rig` reported: frames, ROIs, trace rows, trials, twin neurons, and the
   values in `expect` (a list of {"path": "...", "index": [...], "value": x}).

Prints one JSON line with what it found; exits non-zero on any failure.
"""

import json
import sys
import warnings


def fail(msg):
    print(f"check_nwb: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) < 2:
        fail("usage: check_nwb.py FILE.nwb [EXPECT.json]")
    path = sys.argv[1]
    expect = json.load(open(sys.argv[2])) if len(sys.argv) > 2 else None

    import numpy as np
    import pynwb
    from nwbinspector import Importance, inspect_nwbfile

    found = {"pynwb": pynwb.__version__}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pynwb.NWBHDF5IO(path, "r") as io:
            nwb = io.read()
            found["identifier"] = nwb.identifier
            found["session_start_time"] = nwb.session_start_time.isoformat()
            ophys = nwb.processing.get("ophys")
            ps = None
            if ophys is not None:
                ps = ophys["ImageSegmentation"]["PlaneSegmentation"]
                found["rois"] = len(ps)
                found["roi_ids"] = [int(i) for i in ps.id[:]]
                if "DfOverF" in ophys.data_interfaces:
                    dff = ophys["DfOverF"]["DfOverF"]
                    found["trace_rows"] = int(dff.data.shape[0])
                    found["dff_sum"] = float(np.nansum(dff.data[:]))
                    assert dff.rois.table is ps, "DfOverF rois point at the PlaneSegmentation"
                    # Weighted masks survive: the first ROI's mask as an image has its weights.
                    mask = ps["pixel_mask"][0]
                    found["roi0_pixels"] = len(mask)
                    found["roi0_weight_sum"] = float(sum(p[2] for p in mask))
            found["frames"] = (
                int(nwb.acquisition["TwoPhotonSeries"].data.shape[0])
                if "TwoPhotonSeries" in nwb.acquisition
                else 0
            )
            if found["frames"]:
                tps = nwb.acquisition["TwoPhotonSeries"]
                found["frame_0_sum"] = int(np.asarray(tps.data[0], dtype=np.int64).sum())
                found["frame_last_sum"] = int(
                    np.asarray(tps.data[found["frames"] - 1], dtype=np.int64).sum()
                )
                found["imaging_plane"] = tps.imaging_plane.name
                found["indicator"] = tps.imaging_plane.indicator
                found["location"] = tps.imaging_plane.location
                found["excitation_lambda"] = float(tps.imaging_plane.excitation_lambda)
            found["trials"] = len(nwb.trials) if nwb.trials is not None else 0
            if nwb.trials is not None:
                found["trial_clip_ids"] = [int(c) for c in nwb.trials["clip_id"][:]]
                found["trial_start_0"] = float(nwb.trials["start_time"][0])
            twin = nwb.processing.get("twin")
            if twin is not None:
                pred = twin["predicted"]
                found["twin_rows"] = int(pred.data.shape[0])
                found["twin_neurons"] = int(pred.data.shape[1])
                fid = twin["neuron_fidelity"]
                found["twin_roi_ids"] = [int(i) for i in fid["roi_id"][:]]
                # The region ties each twin neuron to its ROI mask.
                rows = list(fid["roi"].data[:])
                assert [found["roi_ids"][r] for r in rows] == found["twin_roi_ids"]
            beh = nwb.processing.get("behavior")
            if beh is not None:
                rs = beh["BehavioralTimeSeries"]["running_speed"]
                found["behavior_samples"] = int(rs.data.shape[0])
            found["rig_config_chars"] = len(nwb.data_collection or "")
            found["subject_id"] = nwb.subject.subject_id

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        errors = pynwb.validate(path=path)
    # Without cached specifications pynwb validates against its own core namespace; anything it
    # warns about on the way is reported (it would be an error to a stricter reader).
    found["validate_warnings"] = [str(w.message) for w in caught]
    found["validate_errors"] = [str(e) for e in errors]

    messages = list(inspect_nwbfile(nwbfile_path=path))
    # Everything above a suggestion fails: ERROR (a check that crashed), PYNWB_VALIDATION,
    # CRITICAL and BEST_PRACTICE_VIOLATION.
    bad = [m for m in messages if m.importance.value > Importance.BEST_PRACTICE_SUGGESTION.value]
    found["inspector"] = [
        f"{m.importance.name} {m.check_function_name} {m.location}: {m.message}" for m in messages
    ]
    print(json.dumps(found))

    if found["validate_errors"]:
        fail(f"pynwb.validate: {found['validate_errors']}")
    if bad:
        fail("nwbinspector: " + "; ".join(found["inspector"]))
    if expect is not None:
        checks = {
            "frames": expect["frames"] if expect.get("frames_written") else 0,
            "rois": expect["rois"],
            "trace_rows": expect["trace_rows"],
            "trials": expect["trials"],
            "behavior_samples": expect["behavior_samples"],
        }
        if expect.get("twin_neurons"):
            checks["twin_neurons"] = expect["twin_neurons"]
            checks["twin_rows"] = expect["twin_rows"]
        for k, v in checks.items():
            if found.get(k, 0) != v:
                fail(f"{k}: the NWB file has {found.get(k)}, rig reported {v}")
        for e in expect.get("expect", []):
            got = found.get(e["key"])
            want = e["value"]
            ok = (
                abs(got - want) <= 1e-6 * max(1.0, abs(want))
                if isinstance(want, float)
                else got == want
            )
            if not ok:
                fail(f"{e['key']}: the NWB file has {got}, the session has {want}")


if __name__ == "__main__":
    main()
