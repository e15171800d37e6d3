"""Benchmark netstorm.kernels: GB/s of each kernel next to numpy and STREAM copy/triad.

Usage: python benchmarks/kernels.py [--n N] [--inputs K] [--repeat R] [--json]

Prints a table (or, with --json, the dict from ``netstorm.cli.bench.kernels.run``). Bytes are
counted STREAM-style; see ``netstorm.cli.bench.kernels`` for the conventions.
"""

from __future__ import annotations

import argparse
import json

from netstorm.cli.bench import kernels as bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2**24, help="elements per buffer")
    parser.add_argument("--inputs", type=int, default=4, help="buffers summed by fused_reduce")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per figure")
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON")
    args = parser.parse_args(argv)
    res = bench.run(n=args.n, inputs=args.inputs, repeat=args.repeat)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"backend={res['backend']} n={res['n']} inputs={res['inputs']} "
          f"threads={res['threads']} ({res['timing']})")
    print(f"{'kernel':34s} {'GB/s':>8s} {'ms':>8s} {'vs_numpy':>9s} {'vs_triad':>9s}")
    for row in res["results"]:
        vs_np = f"{row['vs_numpy']:.2f}x" if "vs_numpy" in row else ""
        vs_tr = f"{row['vs_triad']:.0%}" if "vs_triad" in row else ""
        print(f"{row['kernel']:34s} {row['gbps']:8.1f} {row['seconds'] * 1e3:8.2f} "
              f"{vs_np:>9s} {vs_tr:>9s}")
    for dtype, err in res["codec_error"].items():
        print(f"codec {dtype}: max rel err {err['max_rel_err']:.3g} "
              f"(normal range {err['max_rel_err_normal']:.3g}, unit roundoff "
              f"{err['unit_roundoff']:.3g}), rms rel {err['rms_rel_err']:.3g}, "
              f"max abs {err['max_abs_err']:.3g}, n={err['n']}")
    print(f"gpu: {res['gpu']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
