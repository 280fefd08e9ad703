#!/usr/bin/env python3
"""Prints criterion's mean estimates (target/criterion) as a Markdown table with ratios to
each group's baseline, for BENCHMARKS.md."""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
rows = {}
for est in sorted(root.glob("**/new/estimates.json")):
    bench = json.loads((est.parent / "benchmark.json").read_text())
    mean = json.loads(est.read_text())["mean"]["point_estimate"]
    rows[bench["full_id"]] = (bench["group_id"], bench.get("value_str"), mean)

print("| benchmark | mean | × baseline |")
print("| --- | ---: | ---: |")
for full_id, (group, value, mean) in sorted(rows.items()):
    base = next(
        (m for f, (g, v, m) in rows.items() if g == group and "baseline" in f and v == value),
        None,
    )
    ratio = f"{mean / base:.1f}" if base else ""
    print(f"| {full_id} | {mean:.1f} ns | {ratio} |")
