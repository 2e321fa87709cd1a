#!/usr/bin/env bash
# Accuracy against wall time on mnist5k (MLP 784-512-10, symmetric EP, the default job): the paper's
# synchronous fixed-T dynamics against asynchronous updates with a convergence stop, over 3 seeds.
#
#   bash benchmarks/async_tol_mnist5k.sh                   # 3 seeds x 2 dynamics, default epochs
#   EPOCHS=5 SEEDS="0 1 2" TOL=1e-4 OUT=/tmp/async_tol bash benchmarks/async_tol_mnist5k.sh
#   EXTRA="device=cpu" bash benchmarks/async_tol_mnist5k.sh   # anything else launch.py accepts
#
# Each run writes its own dir under $OUT; the summary (final/best test accuracy, training seconds,
# mean relaxation steps per batch, read from each run's metrics.jsonl) is printed and saved as
# $OUT/summary.md. Runs one job at a time, so wall times are comparable on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f launch.py ]; then
  echo "launch.py not found: this script drives the eqprop app (python launch.py ...)" >&2
  exit 2
fi
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
SEEDS=${SEEDS:-"0 1 2"}
TOL=${TOL:-1e-4}
OUT=${OUT:-results/async_tol_mnist5k/$(date +%Y-%m-%d_%H-%M-%S)}
EPOCHS_ARG=${EPOCHS:+epochs=$EPOCHS}
mkdir -p "$OUT"
for seed in $SEEDS; do
  for dyn in sync async; do
    if [ "$dyn" = sync ]; then over="dynamics.update=sync dynamics.tol=0.0"; else over="dynamics.update=async dynamics.tol=$TOL"; fi
    dir="$OUT/${dyn}_seed${seed}"
    echo "== $dyn seed $seed -> $dir"
    # shellcheck disable=SC2086
    $PY launch.py task=mnist5k $over seed="$seed" $EPOCHS_ARG ${EXTRA:-} hydra.run.dir="$dir"
  done
done
$PY - "$OUT" "$TOL" <<'PYEOF'
import json, pathlib, statistics, sys
out, tol = pathlib.Path(sys.argv[1]), sys.argv[2]
rows = {}
for run in sorted(out.glob("*_seed*")):
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    lines = [l for l in lines if l.get("status", "ok") == "ok" and "test_acc" in l]
    if not lines:
        continue
    dyn = run.name.split("_seed")[0]
    rows.setdefault(dyn, []).append(dict(
        final=lines[-1]["test_acc"], best=max(l["test_acc"] for l in lines),
        seconds=sum(l["seconds"] for l in lines),
        free=statistics.mean(l.get("steps_free", float("nan")) for l in lines),
        nudged=statistics.mean(l.get("steps_nudged", float("nan")) for l in lines)))
def ms(v):
    return f"{statistics.mean(v):.4g} ± {statistics.stdev(v):.2g}" if len(v) > 1 else f"{v[0]:.4g}"
label = {"sync": "sync, fixed T (paper)", "async": f"async, tol {tol}"}
text = ["| dynamics | seeds | final test acc | best test acc | training s (all epochs) | free steps / batch | nudged steps / batch |",
        "|---|---|---|---|---|---|---|"]
for dyn, rs in rows.items():
    text.append(f"| {label.get(dyn, dyn)} | {len(rs)} | {ms([r['final'] for r in rs])} | {ms([r['best'] for r in rs])} | "
                f"{ms([r['seconds'] for r in rs])} | {ms([r['free'] for r in rs])} | {ms([r['nudged'] for r in rs])} |")
print("\n".join(text))
(out / "summary.md").write_text("\n".join(text) + "\n")
print(f"wrote {out / 'summary.md'}")
PYEOF
