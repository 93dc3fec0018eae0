"""UWM's ratio floor on relsafe-mini's vision tower (docs/benchmarks.md, issue 14): how many weights
hold the 2% score mass per layer, and each layer's max/mean score, with the absolute 1e-12 guard
only (``floor=0``) and with the default 1% ratio floor. Calibration on the default policy's EDIT
quadruplets; TEST is not read.

    python benchmarks/uwm_floor_layers.py
"""

from __future__ import annotations

import functools

import relsafe.methods.uwm.calibrate as cal_mod
from relsafe import api
from relsafe.methods.uwm import UWMConfig, calibration_data, compute_scores, select_weights
from relsafe.methods.uwm.scores import pair_factors


def main() -> None:
    model = api.load_model("relsafe-mini")
    policy = api.load_policy("default")
    cfg = UWMConfig(towers=["vision"])
    data = calibration_data(policy, cfg)
    for floor in (0.0, 0.01):
        cal_mod.pair_factors = functools.partial(pair_factors, floor=floor)
        cal = compute_scores(model, data, cfg, progress=False)
        sel = select_weights(cal.scores, UWMConfig(towers=["vision"], tau=0.02))
        counts = {k.split(":", 1)[1]: int(v.numel()) for k, v in sel.items()}
        mx = {k.split(":", 1)[1]: float(s.max() / s.mean()) for k, s in cal.scores.items()}
        print(f"floor={floor}: n selected per layer at tau 0.02: {counts}")
        print(f"   max/mean score per layer: { {k: f'{v:.3g}' for k, v in mx.items()} }")


if __name__ == "__main__":
    main()
