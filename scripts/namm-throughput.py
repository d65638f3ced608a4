#!/usr/bin/env python3
"""Throughput of a NAMM run from its database: prompts evaluated per second per worker, and
where a unit's time goes (the LLM forward, the NAMM policy, everything else on the worker)
and how much of a generation's wall time is spent outside the workers' evaluations
(coordinator round trips, leasing, the strategy's tell and the state write).

usage: scripts/namm-throughput.py DB RUN [--namm PATH-TO-namm-BINARY]

Reads the stopped coordinator's database through `namm --db DB show RUN GEN --json`.
"""
import argparse
import collections
import json
import subprocess


def namm(binary, db, *args):
    out = subprocess.run(
        [binary, "--db", db, *args, "--json"], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("db")
    p.add_argument("run", type=int)
    p.add_argument("--namm", default="target/release/namm")
    a = p.parse_args()

    history = namm(a.namm, a.db, "history", str(a.run))
    per_worker = collections.defaultdict(lambda: [0, 0.0])  # prompts, busy seconds
    forward = policy = unit_secs = 0.0
    wall = busy = 0.0
    units = 0
    for g in history:
        shown = namm(a.namm, a.db, "show", str(a.run), str(g["generation"]))
        gen_busy = 0.0
        for e in shown["evaluations"]:
            gen_busy += e["eval_seconds"]
            if e["kind"] == "reference":
                continue
            units += 1
            w = per_worker[e["worker_name"]]
            w[0] += len(e["items"])
            w[1] += e["eval_seconds"]
            unit_secs += e["eval_seconds"]
            for i in e["items"]:
                x = i["extra"]
                forward += x.get("forward_secs", 0.0)
                policy += x.get("policy_secs", 0.0)
        busy += gen_busy
        wall += g["generation_seconds"]

    print(f"run {a.run}: {len(history)} generations, {units} candidate/held-out units")
    for name, (prompts, secs) in sorted(per_worker.items()):
        print(f"  worker {name}: {prompts} prompts in {secs:.0f} s busy = "
              f"{prompts / secs:.3f} prompts/s")
    if unit_secs > 0:
        other = unit_secs - forward - policy
        print(f"  inside units: LLM forward {100 * forward / unit_secs:.1f} %, "
              f"NAMM policy {100 * policy / unit_secs:.1f} %, "
              f"other (sampling, tokenising, fork, scoring) {100 * other / unit_secs:.1f} %")
    if wall > 0:
        print(f"  generation wall {wall:.0f} s, summed unit time (reference pass included) "
              f"{busy:.0f} s: "
              f"{100 * max(wall - busy, 0) / wall:.1f} % outside evaluation "
              f"(meaningful with one single-slot worker)")


if __name__ == "__main__":
    main()
