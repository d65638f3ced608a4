#!/usr/bin/env python3
"""Which fitness orders NAMM candidates the way users would: the paper's metric ratio or the
answer likelihood, each measured on a few prompts, against the metric on many held-out ones.

Candidates are θ = centre + σ·z (z standard normal, seeded; σ cycles through SIGMAS so some
candidates are near the centre and some far), with the centre's statistics, at one budget.
`namm eval` runs the full cache and every candidate on the same prompts of each task: the
held-out truth on task seed 1 (indices 0..50, decoded only), and two draws of DRAW prompts on
--draw-seed (indices 0..DRAW draw A, the next DRAW draw B, decoded and with the gold answer
teacher-forced, --answer-likelihood). Per candidate it computes, as the coordinator does
(namm/src/training.rs):
  metric fitness     = mean over tasks of score / max(full score, 1/n)
  likelihood fitness = mean over tasks of exp(mean over prompts of (ℓ − ℓ_full)),
                       ℓ = mean log-probability per gold-answer token
  retained fitness   = the same with each prompt's ℓ − ℓ_full capped at 0
and prints the Spearman rank correlation of each fitness on draw A (and B) with the metric
fitness on the 50 held-out prompts, and the spread between the two draws: mean |f_A − f_B|
over the candidates' standard deviation (the draw noise against the differences between
candidates; scale-free, so the two fitnesses compare) and the rank correlation of A with B.
Then the rank correlations again within each σ: a CMA-ES population shares one step size, so
this is how finely each fitness orders candidates close together.

usage: scripts/fitness-study.py CENTRE.safetensors OUT_DIR [--candidates 48] [--budget 0.25]
         [--draw 8] [--heldout 50] [--seed 0] [--group 4] [--draw-seed 2] [--streams 2]
         [--task passkey:len=1024 --task niah-multikey:len=1024] [--report-only]
Env NAMM_BIN_DIR: where the `namm` binary is (default $CARGO_TARGET_DIR/release or
target/release). The evaluations are kept in OUT_DIR, one file per task, part and group of
--group candidates (the full cache in a group of its own), so a study interrupted (~2 hours
on 2 cores with the defaults) continues where it stopped when rerun with the same arguments;
--report-only reports on the candidates done so far on every task.
"""
import argparse
import concurrent.futures
import functools
import json
import math
import os
import pathlib
import random
import struct
import subprocess

SIGMAS = [0.02, 0.05, 0.1, 0.2]


def read_safetensors(path):
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        fmt = {"F32": "f", "F64": "d"}[info["dtype"]]
        lo, hi = info["data_offsets"]
        count = (hi - lo) // struct.calcsize(fmt)
        tensors[name] = (info["dtype"], list(struct.unpack(f"<{count}{fmt}", body[lo:hi])))
    return tensors, header.get("__metadata__", {})


def write_safetensors(path, tensors, metadata):
    header, blobs, offset = {}, [], 0
    for name, (dtype, values) in tensors.items():
        fmt = {"F32": "f", "F64": "d"}[dtype]
        blob = struct.pack(f"<{len(values)}{fmt}", *values)
        header[name] = {"dtype": dtype, "shape": [len(values)],
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    pathlib.Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def candidates(centre, out, count, seed):
    tensors, metadata = read_safetensors(centre)
    dtype, theta = tensors["params"]
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        sigma = SIGMAS[i % len(SIGMAS)]
        moved = [t + sigma * rng.gauss(0.0, 1.0) for t in theta]
        path = out / f"candidate-{i:03}.safetensors"
        meta = dict(metadata, vector=f"study candidate {i}: centre + {sigma}·z (seed {seed})")
        write_safetensors(path, dict(tensors, params=(dtype, moved)), meta)
        paths.append(path)
    return paths


def namm_binary():
    target = os.environ.get("CARGO_TARGET_DIR", pathlib.Path(__file__).parent.parent / "target")
    return pathlib.Path(os.environ.get("NAMM_BIN_DIR", pathlib.Path(target) / "release")) / "namm"


def jobs(tasks, paths, args, out):
    """One `namm eval` per task, part (held-out or draws) and group of policies, the full cache
    first; groups outer so that candidates complete on every task in order."""
    groups = [["full"]] + [
        [f"namm:{p},budget={args.budget}" for p in paths[i:i + args.group]]
        for i in range(0, len(paths), args.group)
    ]
    parts = {
        # The truth needs only the metric: no likelihood pass (it would double the cost).
        "heldout": ["--seed", "1", "--samples", str(args.heldout)],
        "draws": ["--seed", str(args.draw_seed), "--samples", str(2 * args.draw),
                  "--answer-likelihood"],
    }
    binary = str(namm_binary())
    for g, policies in enumerate(groups):
        for task in tasks:
            stem = task.replace(":", "_").replace(",", "_").replace("=", "-")
            for part, flags in parts.items():
                cmd = [binary, "eval", "--task", task, "--json", *flags]
                cmd += [a for p in policies for a in ("--policy", p)]
                yield (task, part, out / f"eval-{stem}-{part}-group-{g:03}.json", cmd)


def run(threads, job):
    task, part, file, cmd = job
    if not file.exists():
        print(f"{task} {part}: {file.name}", flush=True)
        part_file = file.with_suffix(".part")
        with open(part_file, "w") as f:
            subprocess.run(cmd, stdout=f, check=True,
                           env=dict(os.environ, RAYON_NUM_THREADS=str(threads)))
        part_file.rename(file)


def evaluate(tasks, paths, args, out):
    """{(task, part): [every policy's result]}, over the files done (all with --report-only)."""
    todo = list(jobs(tasks, paths, args, out))
    if not args.report_only:
        # Streams of one thread each: ~1.5x the throughput of one two-thread process.
        threads = max(1, (os.cpu_count() or 1) // args.streams)
        with concurrent.futures.ThreadPoolExecutor(args.streams) as pool:
            list(pool.map(functools.partial(run, threads), todo))
    results = {}
    for task, part, file, _ in todo:
        if file.exists():
            results.setdefault((task, part), []).extend(json.loads(file.read_text())["results"])
    return results


def metric(scores, full):
    n = len(scores)
    return (sum(scores) / n) / max(sum(full) / n, 1.0 / n)


def likelihood(logps, full, cap=math.inf):
    return math.exp(sum(min(l - f, cap) for l, f in zip(logps, full)) / len(logps))


def fitnesses(results, tasks, part, window, likelihoods=True):
    """{candidate: [metric, likelihood, retained]} on the `part` prompts in `window` (the
    metric alone without `likelihoods`), for the candidates evaluated on every task."""
    out = {}
    for task in tasks:
        rows = results.get((task, part), [])
        full = next((r["results"] for r in rows if r["policy"] == "full"), None)
        if full is None:
            continue  # a report while the full cache's run is still going
        full = [r for r in full if r["index"] in window]
        for r in rows:
            if r["policy"] == "full":
                continue
            mine = [s for s in r["results"] if s["index"] in window]
            fs = [metric([s["score"] for s in mine], [s["score"] for s in full])]
            if likelihoods:
                logps = ([s["answer_logprob"] for s in mine], [s["answer_logprob"] for s in full])
                fs += [likelihood(*logps), likelihood(*logps, cap=0.0)]
            out.setdefault(r["policy"], []).append(fs)
    return {name: [sum(f) / len(tasks) for f in zip(*fs)]
            for name, fs in out.items() if len(fs) == len(tasks)}


def sd(values):
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / max(len(values) - 1, 1)) or float("nan")


def ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    r = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2.0
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("centre")
    p.add_argument("out")
    p.add_argument("--candidates", type=int, default=48)
    p.add_argument("--budget", default="0.25")
    p.add_argument("--draw", type=int, default=8)
    p.add_argument("--heldout", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", action="append")
    p.add_argument("--group", type=int, default=4, help="candidates per `namm eval` call")
    p.add_argument("--draw-seed", type=int, default=2, help="task seed of the two draws")
    p.add_argument("--streams", type=int, default=2, help="`namm eval` processes at once")
    p.add_argument("--report-only", action="store_true",
                   help="evaluate nothing: report on the candidates done on every task")
    args = p.parse_args()
    tasks = args.task or ["passkey:len=1024", "niah-multikey:len=1024"]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = candidates(args.centre, out, args.candidates, args.seed)
    results = evaluate(tasks, paths, args, out)

    h, d = args.heldout, args.draw
    truth = fitnesses(results, tasks, "heldout", range(h), likelihoods=False)
    draw_a = fitnesses(results, tasks, "draws", range(d))
    draw_b = fitnesses(results, tasks, "draws", range(d, 2 * d))
    names = sorted(set(truth) & set(draw_a))
    if len(names) < 3:
        raise SystemExit(f"{len(names)} candidates done on every task: too few to rank")
    gold = [truth[n][0] for n in names]
    print(f"{len(names)} candidates, tasks {tasks}, budget {args.budget}; truth: metric fitness "
          f"on {h} prompts per task (task seed 1), mean {sum(gold) / len(gold):.3f}, "
          f"sd {sd(gold):.3f}; two draws of {d} prompts per task (task seed {args.draw_seed})")
    labels = ["metric", "likelihood", "retained"]
    print("| fitness on a draw | rank corr. with truth (draw A, B) | mean abs(A − B) / sd | rank corr. A–B |")
    print("|---|--:|--:|--:|")
    for k, label in enumerate(labels):
        a = [draw_a[n][k] for n in names]
        b = [draw_b[n][k] for n in names]
        spread = sum(abs(x - y) for x, y in zip(a, b)) / len(a) / sd(a + b)
        print(f"| {label} | {spearman(a, gold):.2f}, {spearman(b, gold):.2f} | "
              f"{spread:.3f} | {spearman(a, b):.2f} |")
    # A CMA-ES population shares one σ: how each fitness orders candidates that close together.
    print("\nwithin one σ: rank corr. with truth, draw A, B")
    print("| σ | candidates | truth sd | " + " | ".join(labels) + " |")
    print("|--:|--:|--:|" + "--:|" * len(labels))
    for j, sigma in enumerate(SIGMAS):
        near = [n for n in names if int(n.split("candidate-")[1][:3]) % len(SIGMAS) == j]
        if len(near) < 3:
            continue
        g = [truth[n][0] for n in near]
        cells = [f"{spearman([draw_a[n][k] for n in near], g):.2f}, "
                 f"{spearman([draw_b[n][k] for n in near], g):.2f}" for k in range(len(labels))]
        print(f"| {sigma} | {len(near)} | {sd(g):.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
