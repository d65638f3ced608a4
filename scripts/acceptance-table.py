#!/usr/bin/env python3
"""Markdown tables from scripts/acceptance.sh's output folder: per budget, the score of every
policy on every task (100 x mean per-sample score, with the kept fraction of the NAMM), and
each policy's mean score ratio to the full cache over the tasks. Several folders make one
table (e.g. baselines measured in another run of the script); a policy measured in more than
one keeps the last folder's result.

Usage: scripts/acceptance-table.py OUT [OUT...]
"""
import json
import pathlib
import sys


def row_name(policy):
    """`snapkv:budget=0.25` -> `snapkv`; a NAMM keeps its file: `namm:assets/x.safetensors`."""
    family, _, rest = policy.partition(":")
    if family == "namm":
        return "namm:" + rest.split(",budget=")[0]
    return family


def load(folders):
    """{budget: {task: {row: result}}} from every `*-budget-B.json` in the folders."""
    tables = {}
    paths = [p for f in folders for p in sorted(pathlib.Path(f).glob("*-budget-*.json"))]
    for path in paths:
        budget = path.stem.rsplit("-budget-", 1)[1]
        report = json.loads(path.read_text())
        for result in report["results"]:
            result["seed"] = report["seed"]
            by_task = tables.setdefault(budget, {}).setdefault(result["task"], {})
            by_task[row_name(result["policy"])] = result
    return tables


def print_table(budget, by_task):
    tasks = list(by_task)
    families = []
    for rows in by_task.values():
        families += [f for f in rows if f not in families]
    seeds = sorted({r["seed"] for rows in by_task.values() for r in rows.values()})
    print(f"\nBudget {budget}, task seed {seeds}: score (a NAMM's kept fraction)\n")
    print("| policy | " + " | ".join(tasks) + " | mean ratio to full |")
    print("|---|" + "--:|" * (len(tasks) + 1))
    for family in families:
        cells, ratios = [], []
        for task in tasks:
            r = by_task[task].get(family)
            if r is None:
                cells.append("")
                continue
            cell = f"{r['score']:.1f}"
            if family.startswith("namm:"):
                cell += f" ({r['mean_kept_fraction']:.3f})"
            cells.append(cell)
            full = by_task[task].get("full", {}).get("score", 0)
            if full > 0:
                ratios.append(r["score"] / full)
        ratio = f"{sum(ratios) / len(ratios):.2f}" if ratios else ""
        print(f"| {family} | " + " | ".join(cells) + f" | {ratio} |")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for budget, by_task in sorted(load(sys.argv[1:]).items()):
        print_table(budget, by_task)


if __name__ == "__main__":
    main()
