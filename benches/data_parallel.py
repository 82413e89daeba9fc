#!/usr/bin/env python3
"""Time per step of data-parallel training, 1 process against N, measured in one run.

  python3 benches/data_parallel.py [--bin target/release/dp-train] [--workers 2] [--out FILE]

Each plan is trained with the same seed by one process and by N (`dp-train train --workers
N`); the table gives the seconds per step of each (training only: loading and the frozen
layers' pass are not counted), their ratio, and whether the two runs released the same
epsilon and the same test accuracy. On a machine with C cores each of the N processes gets
C / N threads, so the ratio shows the overhead of the collectives and of splitting the batch,
not a speed-up.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PLANS = [
    ("Fashion-MNIST MLP, B 1024, fast noise", "examples/fashion_mnist.toml",
     ["privacy.epochs=1", "privacy.noise_mode=fast"]),
    ("Fashion-MNIST MLP, B 1024, secure noise", "examples/fashion_mnist.toml",
     ["privacy.epochs=1", "privacy.noise_mode=secure"]),
    ("Fashion-MNIST MLP, B 1024, BLT correlated noise", "examples/fashion_mnist_blt.toml",
     ["privacy.epochs=1"]),
    ("MiniLM top block + head, B 512, 2000 examples", "examples/minilm_finetune.toml",
     ["data.dataset_size=2000", "privacy.epochs=3"]),
]


def train(binary, plan, overrides, workers, run_dir):
    argv = [binary, "train", "--config", str(ROOT / plan), "--run-dir", str(run_dir), "--json",
            "--workers", str(workers), "--set", "privacy.seed=1"]
    for s in overrides:
        argv += ["--set", s]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout.splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(ROOT / "target/release/dp-train"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, help="also write the table to this file")
    args = p.parse_args()
    n = args.workers
    rows = [f"| plan | steps | 1 process s/step | {n} processes s/step | ratio | same epsilon | test accuracy 1 / {n} |",
            "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, plan, overrides) in enumerate(PLANS):
            one = train(args.bin, plan, overrides, 1, Path(tmp) / f"{k}-1")
            many = train(args.bin, plan, overrides, n, Path(tmp) / f"{k}-{n}")
            steps = one["privacy"]["steps"]
            s1, sn = one["train_seconds"] / steps, many["train_seconds"] / steps
            same = one["privacy"] == many["privacy"]
            rows.append(f"| {name} | {steps} | {s1:.4f} | {sn:.4f} | {sn / s1:.2f} | {'yes' if same else 'NO'} "
                        f"| {100 * one['test_accuracy']:.2f}% / {100 * many['test_accuracy']:.2f}% |")
            print(rows[-1], flush=True)
    table = "\n".join(rows) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
