#!/usr/bin/env python3
"""Prefill and decode speed of namm's engine against llama.cpp on the same GGUF and cores.

For each prompt length and round, interleaved so that a slow moment of the machine hits both
engines alike: `namm bench` with the attention taps a NAMM reads, `namm bench --no-taps`, and
llama.cpp through llama-cpp-python (built for this CPU: pip compiles it with the machine's
instruction set; CMAKE_ARGS="-DGGML_NATIVE=ON" says so explicitly). Both use the same number
of threads and the same prompt token ids; llama.cpp reads the prompt in batches of 512
tokens, namm in its own chunks of 128. Prints the median of the rounds and the ratios.

usage: scripts/engine-vs-llamacpp.py [--model GGUF] [--lengths 512,1024,2048,4096]
                                     [--rounds 3] [--decode 32] [--threads 2]
                                     [--format int8+gguf] [--json OUT]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def namm_bin():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return os.environ.get("NAMM_BIN", os.path.join(target, "release", "namm"))


def prompt_ids(vocab, tokens):
    # The ids `namm bench` feeds (row 0): the same prompt for both engines.
    return [(i * 7919) % (vocab - 3) + 3 for i in range(tokens)]


def run_namm(model, fmt, tokens, decode, threads, taps):
    cmd = [namm_bin(), "bench", "--model", model, "--format", fmt, "--tokens", str(tokens),
           "--decode", str(decode), "--batch", "1", "--json"] + ([] if taps else ["--no-taps"])
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    t = json.loads(out)["throughput"][0]
    return t["prefill_tokens_per_sec"], t["decode_tokens_per_sec"]


def run_llamacpp(llm, vocab, tokens, decode):
    ids = prompt_ids(vocab, tokens)
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    prefill = tokens / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(decode):
        logits = llm.scores[llm.n_tokens - 1]
        llm.eval([int(logits.argmax())])
    return prefill, decode / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(REPO, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--lengths", default="512,1024,2048,4096")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--format", default="int8+gguf", help="namm's weight format (namm eval --format)")
    ap.add_argument("--json", help="also write every measurement here")
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama-cpp-python is missing: CMAKE_ARGS=\"-DGGML_NATIVE=ON\" pip install llama-cpp-python")
    lengths = [int(x) for x in args.lengths.split(",")]
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=max(lengths) + args.decode + 8,
                          n_threads=args.threads, n_threads_batch=args.threads, n_batch=512,
                          logits_all=True, verbose=False)
    vocab = llm.n_vocab()
    print(f"llama.cpp {llama_cpp.__version__}: {llama_cpp.llama_print_system_info().decode().strip()}")
    rows = {}
    for r in range(args.rounds):
        for n in lengths:
            m = rows.setdefault(n, {"namm": [], "namm_no_taps": [], "llama.cpp": []})
            m["namm"].append(run_namm(args.model, args.format, n, args.decode, args.threads, True))
            m["llama.cpp"].append(run_llamacpp(llm, vocab, n, args.decode))
            m["namm_no_taps"].append(run_namm(args.model, args.format, n, args.decode, args.threads, False))
            print(f"round {r + 1} tokens {n}: " + ", ".join(
                f"{k} {v[-1][0]:.0f}/{v[-1][1]:.1f}" for k, v in m.items()), file=sys.stderr)
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    print(f"| prompt tokens | namm prefill (taps) | namm prefill (no taps) | llama.cpp prefill "
          f"| ratio (taps) | namm decode | llama.cpp decode | ratio |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    for n, m in rows.items():
        p, p0, pl = med(m["namm"], 0), med(m["namm_no_taps"], 0), med(m["llama.cpp"], 0)
        d, dl = med(m["namm"], 1), med(m["llama.cpp"], 1)
        print(f"| {n} | {p:.0f} | {p0:.0f} | {pl:.0f} | {p / pl:.2f} | {d:.1f} | {dl:.1f} | {d / dl:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
