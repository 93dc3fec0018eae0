#!/usr/bin/env bash
# The GPU table in one call: embedding throughput, each method's own training step and UWM
# calibration + edit, all at the CLIP ViT-L/14 size (random init, nothing downloaded), written as
# one Markdown table. Under 8 minutes on an H100/H200 (each row has its own time limit; a row that
# fails or runs out of time says so in the table and the others still run).
#
#   benchmarks/gpu.sh                          # on a GPU machine: writes $OUT/gpu_table.md
#   benchmarks/gpu.sh --out table.md           # or a path of your choice
#   benchmarks/gpu.sh --device cpu --quick     # the same script on tiny sizes (checks it runs)
#   benchmarks/gpu.sh --dry-run                # print the commands only
#
# Per row: the raw output goes to <table>.logs/<row>.log and the numbers to <row>.json.
set -u
cd "$(dirname "$0")/.."

OUT_FILE="${OUT:-.}/gpu_table.md"
DEVICE=cuda
QUICK=0
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_FILE="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --dry-run) DRY=1; shift ;;
    *) echo "gpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
LOGS="${OUT_FILE%.md}.logs"
mkdir -p "$LOGS" "$(dirname "$OUT_FILE")"
export HF_HUB_OFFLINE=1 CI=true PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if [ "$QUICK" = 1 ]; then
  EMBED=(--config small --n-images 16 --n-texts 32 --batch-size 8 --per-item-n 4 --from-jpeg)
  TRAIN=(--config small --batch-size 2 --steps 1)
  UWM=(--skip-vit-l --n-items 8 --batch-size 4)
  LIMITS=(300 300 300)
else
  EMBED=(--config vit-l-14 --n-images 4096 --n-texts 8192 --batch-size 256 --per-item-n 64
         --from-jpeg --modes auto,float32)
  TRAIN=(--config vit-l-14 --batch-size 32 --steps 3)  # each method's own edit, 2 styles
  UWM=(--skip-mini --n-items 2000 --batch-size 128)
  LIMITS=(180 200 100)
fi
NAMES=(embed train uwm)
CMDS=(
  "$PY benchmarks/embed_throughput.py --device $DEVICE ${EMBED[*]} --json $LOGS/embed.json"
  "$PY benchmarks/train_step.py --device $DEVICE ${TRAIN[*]} --json $LOGS/train.json"
  "$PY benchmarks/uwm_speed.py --device $DEVICE ${UWM[*]} --json $LOGS/uwm.json"
)

for i in 0 1 2; do
  name="${NAMES[$i]}"
  if [ "$DRY" = 1 ]; then
    echo "[$name, limit ${LIMITS[$i]}s] ${CMDS[$i]}"
    continue
  fi
  rm -f "$LOGS/$name.json"
  start=$(date +%s)
  timeout "${LIMITS[$i]}" bash -c "${CMDS[$i]}" >"$LOGS/$name.log" 2>&1
  rc=$?
  echo "$rc $(( $(date +%s) - start ))" >"$LOGS/$name.rc"
  echo "gpu.sh: $name finished (rc $rc) in $(( $(date +%s) - start ))s" >&2
done
[ "$DRY" = 1 ] && exit 0

"$PY" - "$LOGS" "$OUT_FILE" "$DEVICE" <<'PYEOF'
"""Compose the Markdown table from each row's JSON; a missing or broken row says why."""
import json
import sys
from pathlib import Path

logs, out, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
lines = [f"# relsafe GPU table ({device})", "", "| row | result | seconds |", "|---|---|---:|"]


def status(name):
    rc, secs = (logs / f"{name}.rc").read_text().split()
    return int(rc), secs


def failed(name, rc, secs):
    tail = (logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
    why = {124: "ran out of time", 0: "no results file"}.get(rc, f"exit {rc}")
    lines.append(f"| {name} | **FAILED** ({why}): `{tail[0][:160]}` | {secs} |")


for name in ("embed", "train", "uwm"):
    rc, secs = status(name)
    path = logs / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        failed(name, rc, secs)
        continue
    if rc != 0:
        failed(name, rc, secs)
        continue
    if name == "embed":
        for inp, r in data["results"].items():
            ref, item = r["reference"], r["per-item"]
            for mode in data["modes"]:
                cos = data["min_cosine"][inp][mode]
                lines.append(
                    f"| embed {data['config']}, {inp}, relsafe {mode} | {r[mode]:,.0f}/s = "
                    f"{r[mode] / ref:.2f}x batched fp32 ({ref:,.0f}/s), {r[mode] / item:.1f}x "
                    f"per-item ({item:,.1f}/s); min cosine {cos:.5f} | {secs} |"
                )
    elif name == "train":
        for prof, r in data["rows"].items():
            lines.append(
                f"| train step {data['args']['config']} {prof}, B={data['args']['batch_size']} | "
                f"reference {r['reference']:.3f} s, relsafe {r['relsafe']:.3f} s = "
                f"{r['reference'] / r['relsafe']:.2f}x"
                + (f" (stopped early: {r['stopped']})" if r.get("stopped") else "")
                + f" | {secs} |"
            )
    else:
        for r in data:
            lines.append(
                f"| UWM {r['model']}, {r['pairs']} pairs | calibration + edit "
                f"{r['uwm_total_s']:.2f} s (forward {r['forward_s']:.2f}, scoring "
                f"{r['scoring_s']:.2f}, select+edit {r['select_edit_s']:.2f}) | {secs} |"
            )
out.write_text("\n".join(lines) + "\n")
print(out.read_text())
PYEOF
