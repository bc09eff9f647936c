"""``python -m bench [NAME ...] [--seeds N] [--quick]``: run benchmarks, write bench/results/.

Each benchmark writes ``bench/results/<name>.json``; ``bench/results/SUMMARY.md`` is rebuilt
from all result files after every run.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from bench import summary
from bench.common import write_result

BENCHMARKS = {
    "throughput": "bench.throughput",    # training and inference images/s per architecture
    "cpu_recipe": "bench.cpu_recipe",    # BloodMNIST >= 0.97 within 10 min on this CPU
    "accuracy": "bench.accuracy",        # recipes over seeds on the official splits
    "report_models": "bench.report_models",  # the report's six models, reproduced
    "overhead": "bench.overhead",        # platform job vs. bare model.fit, same config
    "serving": "bench.serving",          # prediction API and batch jobs vs. bare baselines
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"any of: {', '.join(BENCHMARKS)}; or 'all'")
    parser.add_argument("--seeds", type=int, default=None, help="Seeds per recipe.")
    parser.add_argument("--quick", action="store_true", help="Fewer epochs: a smoke run.")
    parser.add_argument("--only", help="accuracy, report_models: run one preset, keep the others' results.")
    args = parser.parse_args(argv)
    names = [n for n in args.names if n != "all"] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    command = "make bench BENCH=" + shlex.quote(" ".join(args.names or ["all"]))
    extra = (([f"--seeds {args.seeds}"] if args.seeds else []) + (["--quick"] if args.quick else [])
             + ([f"--only {args.only}"] if args.only else []))
    if extra:
        command += " BENCH_ARGS=" + shlex.quote(" ".join(extra))
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        print(f"== {name} ==", flush=True)
        options = {"only": args.only} if args.only and name in ("accuracy", "report_models") else {}
        result = module.run(seeds=args.seeds, quick=args.quick, **options)
        path = write_result(name, result, command)
        print(f"   wrote {path}", flush=True)
    summary.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
