"""A grid of private fine-tuning runs of MiniLM on Rotten Tomatoes (the GPU plan,
`examples/minilm_rotten_tomatoes_gpu.toml`, with one change per run), in order, until a deadline.

  python3 benches/finetune_grid.py --out DIR [--bin gpu/dp-train] [--deadline 380] [--dry-run]

Writes `grid.jsonl` (one line per run: its overrides, test accuracy, epsilon, steps, seconds) and
`grid.md` under DIR. Accuracies are on the public test split: choosing among them is not private
(`dp-train tune` is the private way); this grid is a study of where the good settings lie.
`--dry-run` runs the first two settings on the CPU, cut to 64 examples of 8 tokens.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))
from gpu import TINY_PLAN, run_part  # noqa: E402

FULL = 'model.finetune={ kind = "all" }'
SGD = 'training.optimizer={ kind = "sgd", momentum = 0.9, nesterov = false }'

# (name, overrides), most informative first. Every run is seeded (seed 1) and at epsilon 8
# unless it says otherwise; batch 512, 3 epochs (60 steps) and Adam unless it says otherwise.
GRID = [
    ("all, adam 1e-3, C 0.1", [FULL, "training.learning_rate=0.001", "privacy.clip_norm=0.1"]),
    ("all, adam 3e-4, C 1", [FULL, "training.learning_rate=0.0003", "privacy.clip_norm=1.0"]),
    ("all, adam 3e-3, C 0.1", [FULL, "training.learning_rate=0.003", "privacy.clip_norm=0.1"]),
    ("all, adam 1e-4, C 1", [FULL, "training.learning_rate=0.0001", "privacy.clip_norm=1.0"]),
    ("all, adam 3e-4, C 0.1", [FULL, "training.learning_rate=0.0003", "privacy.clip_norm=0.1"]),
    ("all, adam 1e-3, C 1", [FULL, "training.learning_rate=0.001", "privacy.clip_norm=1.0"]),
    ("all, adam 1e-2, C 0.1", [FULL, "training.learning_rate=0.01", "privacy.clip_norm=0.1"]),
    ("all, adam 1e-3, C 0.1, 10 epochs", [FULL, "training.learning_rate=0.001", "privacy.clip_norm=0.1",
                                           "privacy.epochs=10"]),
    ("all, adam 1e-3, C 0.1, batch 1024, 10 epochs",
     [FULL, "training.learning_rate=0.001", "privacy.clip_norm=0.1", "privacy.expected_batch_size=1024",
      "privacy.epochs=10"]),
    ("all, adam 3e-4, C 1, 10 epochs", [FULL, "training.learning_rate=0.0003", "privacy.clip_norm=1.0",
                                         "privacy.epochs=10"]),
    ("all, sgd 0.5, C 1", [FULL, SGD, "training.learning_rate=0.5", "privacy.clip_norm=1.0"]),
    ("all, sgd 2, C 1", [FULL, SGD, "training.learning_rate=2.0", "privacy.clip_norm=1.0"]),
    ("lora r8, adam 1e-3, C 1", ['model.finetune={ kind = "lora", rank = 8, alpha = 16 }',
                                 "training.learning_rate=0.001", "privacy.clip_norm=1.0"]),
    ("lora r8, adam 3e-3, C 0.1", ['model.finetune={ kind = "lora", rank = 8, alpha = 16 }',
                                   "training.learning_rate=0.003", "privacy.clip_norm=0.1"]),
    ("top 2, adam 1e-3, C 0.1", ['model.finetune={ kind = "top", blocks = 2 }',
                                 "training.learning_rate=0.001", "privacy.clip_norm=0.1"]),
    ("head only, sgd 2, C 1", ['model.finetune={ kind = "top", blocks = 0 }', SGD,
                               "training.learning_rate=2.0", "privacy.clip_norm=1.0"]),
    ("all, adam 1e-3, C 0.1, no noise", [FULL, "training.learning_rate=0.001", "privacy.clip_norm=0.1",
                                          "privacy.noise=none", "privacy.epsilon=inf"]),
    ("all, adam 1e-3, C 0.1, 10 epochs, no noise", [FULL, "training.learning_rate=0.001",
                                                     "privacy.clip_norm=0.1", "privacy.epochs=10",
                                                     "privacy.noise=none", "privacy.epsilon=inf"]),
]

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--bin", default=str(ROOT / "target/release/dp-train"))
    p.add_argument("--deadline", type=float, default=380.0)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = Path(os.environ.get("DP_GPU_RUNS", "/tmp/dp-grid-runs"))
    subprocess.run(["rm", "-rf", str(runs)], check=True)
    deadline = time.monotonic() + args.deadline
    rows = ["| run | test accuracy | epsilon | steps | train s |", "|---|---|---|---|---|"]
    grid = GRID[:2] if args.dry_run else GRID
    with open(args.out / "grid.jsonl", "w") as out, open(args.out / "grid_log.txt", "w") as log:
        for k, (name, overrides) in enumerate(grid):
            left = deadline - time.monotonic()
            if left < 10:
                break
            argv = [args.bin, "train", "--config", str(ROOT / "examples/minilm_rotten_tomatoes_gpu.toml"),
                    "--run-dir", str(runs / f"run-{k}"), "--json", "--set", "privacy.seed=1"]
            for s in overrides + (TINY_PLAN if args.dry_run else []):
                argv += ["--set", s]
            record = run_part(name, "finetune", min(240, left), argv, {}, log)
            record["overrides"] = overrides
            out.write(json.dumps(record) + "\n")
            out.flush()
            v = record.get("result")
            if v:
                eps = v["privacy"]["epsilon"] if v["private"] else "NOT PRIVATE"
                rows.append(f"| {name} | {100 * v['test_accuracy']:.2f}% | {eps} | {v['privacy']['steps']} "
                            f"| {v['train_seconds']:.1f} |")
            else:
                rows.append(f"| {name} | {record.get('error')} | | | |")
            print(rows[-1], flush=True)
    (args.out / "grid.md").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
