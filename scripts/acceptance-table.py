#!/usr/bin/env python3
"""Markdown tables from scripts/acceptance.sh's output folder: per budget, the score of every
policy on every task (100 x mean per-sample score, with the kept fraction of the NAMM), and
each policy's mean score ratio to the full cache over the tasks.

Usage: scripts/acceptance-table.py OUT
"""
import json
import pathlib
import sys


def policy_family(name):
    """`snapkv:budget=0.25` -> `snapkv`; a NAMM of any file -> `namm`."""
    return name.split(":", 1)[0]


def load(folder):
    """{budget: {task: {family: result}}} from every `*-budget-B.json` in the folder."""
    tables = {}
    for path in sorted(pathlib.Path(folder).glob("*-budget-*.json")):
        budget = path.stem.rsplit("-budget-", 1)[1]
        for result in json.loads(path.read_text())["results"]:
            by_task = tables.setdefault(budget, {}).setdefault(result["task"], {})
            by_task[policy_family(result["policy"])] = result
    return tables


def print_table(budget, by_task):
    tasks = list(by_task)
    families = list(next(iter(by_task.values())))
    print(f"\nBudget {budget} (task seed 1; score, NAMM's kept fraction in brackets)\n")
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
            if family == "namm":
                cell += f" ({r['mean_kept_fraction']:.3f})"
            cells.append(cell)
            full = by_task[task]["full"]["score"]
            if full > 0:
                ratios.append(r["score"] / full)
        ratio = f"{sum(ratios) / len(ratios):.2f}" if ratios else ""
        print(f"| {family} | " + " | ".join(cells) + f" | {ratio} |")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for budget, by_task in sorted(load(sys.argv[1]).items()):
        print_table(budget, by_task)


if __name__ == "__main__":
    main()
