#!/usr/bin/env python3
"""Evaluations pycma's sep-CMA-ES (`CMA_diagonal=True`) needs to reach f <= 1e-8: the
reference coordinator/src/cmaes/tests/pycma.rs holds the coordinator's diagonal C to.

Apart from the diagonal option, pycma runs with its defaults (λ = 4 + ⌊3 ln n⌋, active
weights, CSA), from the usual start for sep-CMA-ES on these functions: x0 = 3·1, σ0 = 2.
Both sides stop only at the target or at the budget (default 20000·n evaluations), and a
seed that exhausts the budget (Rosenbrock's local minimum) counts as a failure. pycma's
advisory stopping rules (`es.stop()`: tolx, noeffectcoord, ...) are not consulted: on
Rosenbrock a diagonal C shrinks while σ grows to match (selected steps are shorter than the
sampled ones in every coordinate), which trips them while the run is still converging
(at n = 10 on every seed). Evaluations are counted in whole generations up to the one whose
best f first reaches the target, as the Rust side counts.

usage: scripts/sep-cma-vs-pycma.py [--dim 100] [--seeds 5] [--functions ellipsoid,rosenbrock]
prints {"<function>": {"median": evals or null, "evals": [evals or null per seed]}, ...}
(`median` is null when more than half of the seeds failed). Needs `pip install cma`.
"""
import argparse
import json
import math
import statistics
import sys
import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # cma warns on import when matplotlib is missing
    import cma

TARGET = 1e-8
X0 = 3.0
SIGMA0 = 2.0


def ellipsoid(x):
    n = len(x)
    return float(np.sum(10.0 ** (6.0 * np.arange(n) / (n - 1)) * x**2))


def rosenbrock(x):
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))


FUNCTIONS = {"ellipsoid": ellipsoid, "rosenbrock": rosenbrock}


def evals_to_target(f, dim, seed, budget):
    """Evaluations until the best f of a generation is <= TARGET, or None."""
    es = cma.CMAEvolutionStrategy(
        dim * [X0],
        SIGMA0,
        {
            "CMA_diagonal": True,
            "seed": seed,
            "verbose": -9,
        },
    )
    while es.countevals < budget:
        xs = es.ask()
        fs = [f(x) for x in xs]
        es.tell(xs, fs)
        if min(fs) <= TARGET:
            return es.countevals
    return None


def median(evals):
    """Median with a failure ranked worse than any success; None when it lands on one."""
    m = statistics.median([math.inf if e is None else e for e in evals])
    return None if math.isinf(m) else m


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--functions", default="ellipsoid,rosenbrock")
    p.add_argument("--budget-per-dim", type=int, default=20000,
                   help="evaluation budget per seed, times the dimension")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    out = {}
    for name in args.functions.split(","):
        evals = [
            evals_to_target(FUNCTIONS[name], args.dim, seed, args.budget_per_dim * args.dim)
            for seed in range(1, args.seeds + 1)
        ]
        out[name] = {"median": median(evals), "evals": evals}
        print(f"{name}: {evals}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
