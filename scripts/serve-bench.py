#!/usr/bin/env python3
"""Load on namm-serve: 1, 4 and 16 concurrent streaming clients on long prompts, for several
memory policies at the same budget. One fresh server per policy; every client sends one
chat request (a ~2k-token passkey prompt with its own key, greedy, 32 tokens) at the same
moment. Prints, per policy and concurrency: requests/s, time to first token p50/p99, decode
tokens/s per request (after its first token) and in total, the kept fraction and the
server's peak resident memory (VmHWM, over the server's whole life so far).

usage: scripts/serve-bench.py [--bin DIR] [--model GGUF] [--policies P,P,...]
                              [--clients 1,4,16] [--tokens 32] [--repeats 40]
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def prompt(key, repeats):
    half = FILLER * repeats
    return (f"There is a pass key hidden in this text. Remember it.\n{half}The pass key is {key}. "
            f"Remember it. {key} is the pass key.\n{half}What is the pass key?")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(bin_dir, model, policy, port, max_concurrent):
    proc = subprocess.Popen(
        [os.path.join(bin_dir, "namm-serve"), "--model", model, "--policy", policy,
         "--listen", f"127.0.0.1:{port}", "--max-concurrent", str(max_concurrent)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit(f"namm-serve with --policy {policy} did not start")


def one_request(port, body, out):
    start = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    c.request("POST", "/v1/chat/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    first, pieces, usage = None, 0, None
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise RuntimeError(chunk["error"]["message"])
        if chunk.get("usage"):
            usage = chunk["usage"]
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            pieces += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    out.append({"ttft": (first or end) - start, "decode_secs": end - (first or end),
                "usage": usage, "end": end, "start": start})


def percentile(values, q):
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


def level(port, clients, tokens, repeats, key0):
    results, threads = [], []
    for i in range(clients):
        body = {"messages": [{"role": "user", "content": prompt(key0 + 7919 * i, repeats)}],
                "temperature": 0, "max_tokens": tokens, "stream": True,
                "stream_options": {"include_usage": True}}
        threads.append(threading.Thread(target=one_request, args=(port, body, results)))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if len(results) != clients:
        sys.exit(f"{clients - len(results)} of {clients} requests failed")
    generated = [r["usage"]["completion_tokens"] for r in results]
    per_request = [(g - 1) / r["decode_secs"] for g, r in zip(generated, results) if r["decode_secs"] > 0]
    return {
        "clients": clients,
        "prompt_tokens": results[0]["usage"]["prompt_tokens"],
        "requests_per_sec": clients / wall,
        "ttft_p50": percentile([r["ttft"] for r in results], 0.5),
        "ttft_p99": percentile([r["ttft"] for r in results], 0.99),
        "decode_tok_s_per_request": sum(per_request) / max(len(per_request), 1),
        "decode_tok_s_total": sum(generated) / wall,
        "kept_fraction": sum(r["usage"]["kept_fraction"] for r in results) / clients,
        "peak_kv_mib": max(r["usage"]["peak_kv_bytes"] for r in results) / 2**20,
    }


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("NAMM_BIN_DIR", os.path.join(target, "release")))
    ap.add_argument("--model", default=os.path.join(repo, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--policies", default="full,namm:default,snapkv:budget=0.25")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=40, help="filler sentences per half of the prompt")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    rows = []
    for policy in args.policies.split(","):
        port = free_port()
        server = start(args.bin, args.model, policy, port, max(levels))
        try:
            for clients in levels:
                row = level(port, clients, args.tokens, args.repeats, 10007)
                row.update(policy=policy, peak_rss_mib=peak_rss_mib(server.pid))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait()
    print("| policy | clients | prompt tokens | requests/s | TTFT p50 s | TTFT p99 s | decode tok/s per request | decode tok/s total | kept | peak KV MiB per request | server peak RSS MiB |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['policy']} | {r['clients']} | {r['prompt_tokens']} | {r['requests_per_sec']:.3f} | "
              f"{r['ttft_p50']:.1f} | {r['ttft_p99']:.1f} | {r['decode_tok_s_per_request']:.1f} | "
              f"{r['decode_tok_s_total']:.1f} | {r['kept_fraction']:.3f} | {r['peak_kv_mib']:.1f} | "
              f"{r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
