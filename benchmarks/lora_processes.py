"""Training throughput of relational-lora on 1 or N processes (docs/distributed.md).

Times the ``run_loop`` call (training steps only, no data building or export) of a
relational-lora edit of relsafe-mini under the ``default`` policy with the default batch sizes,
and prints one JSON line from the main process: processes, steps, loop seconds, steps/s and the
loss curve (compare the curves of 1 and N processes). Run::

    OMP_NUM_THREADS=1 python benchmarks/lora_processes.py 10
    OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 benchmarks/lora_processes.py 10
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch

import relsafe.methods.relational_lora as rl
from relsafe.distributed import current
from relsafe.errors import NotMainProcess
from relsafe.methods.relational_lora import LoraEditConfig, relational_lora
from relsafe.models.registry import load_model
from relsafe.policy import load_policy


def main(argv: list[str]) -> int:
    steps = int(argv[0]) if argv else 10
    torch.set_num_threads(1)
    timed: dict[str, Any] = {}
    real = rl.run_loop

    def spy(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = real(*a, **k)
        timed.update(seconds=time.perf_counter() - t0, curve=out.curve)
        return out

    rl.run_loop = spy  # the edit's own loop, timed from outside
    try:
        relational_lora(
            load_model("relsafe-mini"),
            load_policy("default"),
            LoraEditConfig(steps=steps, log_every=1),
            progress=False,
        )
    except NotMainProcess:
        pass
    d = current()
    if d.is_main:
        s = timed["seconds"]
        curve = [e["loss"] for e in timed["curve"]]
        print(
            json.dumps(
                {
                    "processes": d.world,
                    "steps": steps,
                    "loop_s": s,
                    "steps_per_s": steps / s,
                    "curve": curve,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
