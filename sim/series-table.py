#!/usr/bin/env python3
# One markdown row per seed of a sim/loaded-runs.sh series: checks, run time, the AZ loss
# against its bound, clusters moved, the outage surge and the demand shift.
#   python3 sim/series-table.py OUT_DIR
import json
import os
import re
import sys

out = sys.argv[1]
print("| seed | checks passed | run | az-c found lost / bound | proposals | clusters moved: az-loss"
      " | partition | outage surge served, no replica | demand shift met |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
for line in open(os.path.join(out, "series.log")):
    run = re.match(r"seed (\d+) rc=(\d+) .*seconds=(\d+)", line)
    if not run:
        continue
    seed, rc, seconds = (int(g) for g in run.groups())
    checks = re.search(r"(\d+) invariant checks, (\d+) violations", line)
    passed = f"{int(checks[1]) - int(checks[2])} of {checks[1]}" if checks else f"rc={rc}, no summary"
    path = os.path.join(out, f"seed-{seed}", "report.json")
    if not os.path.exists(path):
        print(f"| {seed} | {passed} | {seconds:,} s | | | | | | |")
        continue
    scenarios = {s["scenario"]: s["measurements"] for s in json.load(open(path))["scenarios"]}
    a, o, shift, p = (scenarios.get(n, {}) for n in ("az-loss", "outage", "demand-shift", "partition"))
    print(f"| {seed} | {passed} | {seconds:,} s"
          f" | {a.get('evacuation.found_lost_ms', 0):,.0f} / {a.get('evacuation.found_lost_bound_ms', 0):,.0f} ms"
          f" | {a.get('evacuation.proposals', 0):.0f} | {a.get('moves.clusters_by_coordinator', 0):,.0f}"
          f" | {p.get('moves.clusters_by_coordinator', 0):,.0f}"
          f" | {o.get('surge_served_without_coordinator_ms', 0) / 1000:,.0f} s"
          f" | {shift.get('shift_to_met_ms', 0) / 1000:.1f} s, {shift.get('slice_moved', 0):,.0f} moved"
          f" for {shift.get('slice_needed', 0):,.0f} needed |")
