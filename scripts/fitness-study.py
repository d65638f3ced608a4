#!/usr/bin/env python3
"""Which fitness orders NAMM candidates the way users would: the paper's metric ratio or the
answer likelihood, each measured on a few prompts, against the metric on many held-out ones.

Candidates are θ = centre + σ·z (z standard normal, seeded; σ cycles through SIGMAS so some
candidates are near the centre and some far), with the centre's statistics, at one budget.
`namm eval --answer-likelihood` runs the full cache and every candidate on the same prompts
of each task (task seed 1, indices 0..50+2·DRAW): indices 0..50 are the held-out truth,
50..50+DRAW draw A and the next DRAW draw B. Per candidate it computes, as the coordinator
does (namm/src/training.rs):
  metric fitness     = mean over tasks of score / max(full score, 1/n)
  likelihood fitness = mean over tasks of exp(mean over prompts of (ℓ − ℓ_full)),
                       ℓ = mean log-probability per gold-answer token
  retained fitness   = the same with each prompt's ℓ − ℓ_full capped at 0
and prints the Spearman rank correlation of each fitness on draw A (and B) with the metric
fitness on the 50 held-out prompts, and the spread between the two draws: mean |f_A − f_B|
over the candidates' standard deviation (the draw noise against the differences between
candidates; scale-free, so the two fitnesses compare) and the rank correlation of A with B.

usage: scripts/fitness-study.py CENTRE.safetensors OUT_DIR [--candidates 48] [--budget 0.25]
         [--draw 8] [--heldout 50] [--seed 0] [--group 4]
         [--task passkey:len=1024 --task niah-multikey:len=1024]
Env NAMM_BIN_DIR: where the `namm` binary is (default $CARGO_TARGET_DIR/release or
target/release). The evaluations are kept in OUT_DIR, one file per task and group of
--group candidates (the full cache in a group of its own), so a study interrupted (~4 hours
on 2 cores with the defaults) continues where it stopped when rerun with the same arguments.
"""
import argparse
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


def evaluate(task, paths, args, out):
    """Every policy's result on `task`: the full cache, then the candidates in order."""
    groups = [["full"]] + [
        [f"namm:{p},budget={args.budget}" for p in paths[i:i + args.group]]
        for i in range(0, len(paths), args.group)
    ]
    stem = f"eval-{task.replace(':', '_').replace(',', '_').replace('=', '-')}"
    target = os.environ.get("CARGO_TARGET_DIR", pathlib.Path(__file__).parent.parent / "target")
    binary = pathlib.Path(os.environ.get("NAMM_BIN_DIR", pathlib.Path(target) / "release")) / "namm"
    cmd = [str(binary), "eval", "--task", task, "--seed", "1",
           "--samples", str(args.heldout + 2 * args.draw), "--answer-likelihood", "--json"]
    results = []
    for g, policies in enumerate(groups):
        file = out / f"{stem}-group-{g:03}.json"
        if not file.exists():
            print(f"{task}: group {g + 1} of {len(groups)}", flush=True)
            part = file.with_suffix(".part")
            with open(part, "w") as f:
                subprocess.run(cmd + [a for p in policies for a in ("--policy", p)],
                               stdout=f, check=True)
            part.rename(file)
        results += json.loads(file.read_text())["results"]
    return results


def metric(scores, full):
    n = len(scores)
    return (sum(scores) / n) / max(sum(full) / n, 1.0 / n)


def likelihood(logps, full, cap=math.inf):
    return math.exp(sum(min(l - f, cap) for l, f in zip(logps, full)) / len(logps))


def fitnesses(results_by_task, window):
    """{candidate: [metric, likelihood, retained]} on the sample indices in `window`."""
    out = {}
    for results in results_by_task:
        full = next(r for r in results if r["policy"] == "full")["results"]
        full = [r for r in full if r["index"] in window]
        for r in results:
            if r["policy"] == "full":
                continue
            mine = [s for s in r["results"] if s["index"] in window]
            m = metric([s["score"] for s in mine], [s["score"] for s in full])
            logps = ([s["answer_logprob"] for s in mine], [s["answer_logprob"] for s in full])
            acc = out.setdefault(r["policy"], [0.0, 0.0, 0.0])
            for k, f in enumerate([m, likelihood(*logps), likelihood(*logps, cap=0.0)]):
                acc[k] += f / len(results_by_task)
    return out


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
    args = p.parse_args()
    tasks = args.task or ["passkey:len=1024", "niah-multikey:len=1024"]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = candidates(args.centre, out, args.candidates, args.seed)
    results = [evaluate(t, paths, args, out) for t in tasks]

    h, d = args.heldout, args.draw
    truth = fitnesses(results, range(h))
    draw_a = fitnesses(results, range(h, h + d))
    draw_b = fitnesses(results, range(h + d, h + 2 * d))
    names = sorted(truth)
    gold = [truth[n][0] for n in names]
    print(f"{len(names)} candidates, tasks {tasks}, budget {args.budget}, "
          f"truth: metric fitness on {h} prompts per task, draws of {d}")
    print("| fitness on a draw | rank corr. with truth (draw A, B) | mean abs(A − B) / sd | rank corr. A–B |")
    print("|---|--:|--:|--:|")
    for k, label in [(0, "metric"), (1, "likelihood"), (2, "retained")]:
        a = [draw_a[n][k] for n in names]
        b = [draw_b[n][k] for n in names]
        spread = sum(abs(x - y) for x, y in zip(a, b)) / len(a) / sd(a + b)
        print(f"| {label} | {spearman(a, gold):.2f}, {spearman(b, gold):.2f} | "
              f"{spread:.3f} | {spearman(a, b):.2f} |")
    print(f"truth itself: the likelihood on the {h} prompts ranks like the metric with "
          f"{spearman([truth[n][1] for n in names], gold):.2f}")


if __name__ == "__main__":
    main()
