#!/usr/bin/env python3
"""Writes the hand-set NAMM that evolution starts from (`[strategy] init_from`).

θ = 0 scores every token 0, so under a budget the ranking is a tie that keeps the oldest
tokens: a poor place for a search to start. This start scores token i by

  score_i = Z₀ᵢ + POOL · Σ_j w_ij (Z₀ⱼ + cos(age_j · ω₁))

* Z₀ is bin 0 of the token's normalised EMA attention spectrogram (spec §4): the attention it
  received from the newest ~100 queries, what SnapKV's observation window measures.
* w_ij is BAM's backward attention (spec §6) over token i and the newer tokens j, with
  queries and keys made of the recency features so that q_i·k_j = A₁cos(ω₁Δ) + A₂cos(ω₂Δ)
  for the age gap Δ: it peaks at Δ = 0 and is ~2 tokens wide (A₂ suppresses the 94-token
  period of ω₁). So a token also counts the attention its next neighbours get, which keeps
  multi-token needles (the five digits of a pass key) whole, as SnapKV's pooling does.
* cos(age · ω₁) (recency feature 5, ω₁ = 50000^(−1/4)) favours the newest ~20 tokens, which
  Z₀ cannot see (the STFT's Hann window gives an invocation's last queries almost no weight);
  it is periodic (94 tokens), a side effect the search may correct.
* b_s is large, so the paper's threshold keeps every token and the budget alone decides.

Tried and dropped (8 prompts per task, task seed 3, budget 0.25): Z₀ alone (passkey 50,
multi-key NIAH 0), Z₀ with a linear age penalty (0 / 12.5), Z₀ with a uniform backward
window (0 / 25), pooling Z₀ without the cos term (50 / 0); this start: 62.5 / 37.5; SnapKV
87.5 / 50.

With `window`, the start of a NAMM with the window feature set (metadata `features =
window`: bin 16 of the spectrogram replaced by the log of the attention from the
invocation's last 32 queries, max-pooled over 7 tokens): score = that feature + b_s, which
ranks the tokens as SnapKV does, for the search to refine with the age and the spectrogram.

With `surprisal BETA`, the start of a NAMM with the surprisal feature set (metadata
`features = surprisal`: the window set, bin 15 replaced by the token's surprisal averaged
over 7 positions): score = surprisal + BETA · window feature + b_s. Surprisal ranks; the
window feature (a log, down to ln 1e-6 ≈ −13.8 for a token no recent query looked at) only
breaks near-ties among predictable tokens when BETA is small.

The file has no statistics (norm_count 0): a run started from it computes them in its
reference pass, for whatever model it trains.

usage: scripts/namm-start.py OUT.safetensors [POOL (default 1) | window | surprisal BETA]
"""
import json
import struct
import sys

PARAMS = 4172
QKV = 96            # W_qkv is 25 × 96 (q ‖ k ‖ v, 32 each), input-major (spec §3)
K0, V0 = 32, 64     # first key and value columns
W_O = 2496          # W_o is 32 × 50: residual Rs = columns 0..25, multiplier Ms = 25..50
W_S = 4146          # final linear layer w_s[25], then b_s
# features: sin(age·ω₀..₃) = 0..3, cos(age·ω₀..₃) = 4..7, then 17 spectral bins
SIN_1, SIN_2, COS_1, COS_2 = 1, 2, 5, 6
Z0 = 8
WINDOW = 24         # the window feature set's statistic in place of bin 16
SURPRISAL = 23      # the surprisal feature set's statistic in place of bin 15
N_BINS = 17


def start(pool):
    theta = [0.0] * PARAMS
    a1, a2 = 100 * 32 ** 0.5, 57 * 32 ** 0.5   # undoes BAM's 1/√32 logit scale
    for col, (feature, scale) in enumerate([(SIN_1, a1), (COS_1, a1), (SIN_2, a2), (COS_2, a2)]):
        theta[feature * QKV + col] = scale
        theta[feature * QKV + K0 + col] = 1.0
    theta[COS_1 * QKV + V0] = 1.0      # value 0 = Z₀ + cos(age · ω₁)
    theta[Z0 * QKV + V0] = 1.0
    theta[W_O + 0 * 50 + Z0] = pool    # Rs[Z₀] += POOL · (attention-weighted value 0)
    theta[W_S + Z0] = 1.0              # score = Z₀ + Rs[Z₀]
    theta[W_S + 25] = 10.0             # b_s: every score ≥ 0, the budget decides
    return theta


def window_start():
    theta = [0.0] * PARAMS
    theta[W_S + WINDOW] = 1.0
    theta[W_S + 25] = 10.0
    return theta


def surprisal_start(beta):
    theta = [0.0] * PARAMS
    theta[W_S + SURPRISAL] = 1.0
    theta[W_S + WINDOW] = beta
    theta[W_S + 25] = 10.0
    return theta


def write(out, theta, note, metadata=None):
    tensors = [
        ("params", "F32", "f", theta),
        ("norm_mean", "F64", "d", [0.0] * N_BINS),
        ("norm_var", "F64", "d", [1.0] * N_BINS),
        ("norm_count", "F64", "d", [0.0]),
    ]
    header, blobs, offset = {}, [], 0
    for name, dtype, fmt, values in tensors:
        blob = struct.pack(f"<{len(values)}{fmt}", *values)
        header[name] = {"dtype": dtype, "shape": [len(values)],
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = {"format": "namm-params-v1", "vector": note, **(metadata or {})}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3, 4):
        sys.exit(__doc__)
    if sys.argv[2:3] == ["surprisal"] and len(sys.argv) == 4:
        beta = float(sys.argv[3])
        write(sys.argv[1], surprisal_start(beta),
              f"hand-set start: surprisal + {beta} x observation-window attention",
              {"features": "surprisal"})
    elif sys.argv[2:] == ["window"]:
        write(sys.argv[1], window_start(), "hand-set start: observation-window attention",
              {"features": "window"})
    else:
        pool = float(sys.argv[2]) if len(sys.argv) == 3 else 1.0
        write(sys.argv[1], start(pool), f"hand-set start: pooled attention mass, pool {pool}")
