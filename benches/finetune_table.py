"""The accuracy table of private fine-tuning (docs/finetuning.md): MiniLM on Rotten Tomatoes, each
way of fine-tuning at its chosen settings, at several epsilons and without noise, over fixed seeds,
plus the tuned run whose total epsilon (search included) is 8.

  python3 benches/finetune_table.py --out DIR [--bin target/release/dp-train]
      [--methods head,top1] [--epsilons 1,3,8,inf] [--seeds 1,2,3] [--tuned] [--device cpu]
  python3 benches/finetune_table.py --out DIR --study     # the grid that chose the settings

Every run is `dp-train train --json` on the method's plan (`examples/minilm_rotten_tomatoes.toml`,
the linear probe, or `examples/minilm_finetune.toml`, the top block) with the method's overrides,
`privacy.epsilon`, and `privacy.seed` (seeded: reproducible). "inf" trains the NOT
PRIVATE baseline (`privacy.noise = "none"`), clipping kept. `--tuned` adds `dp-train tune
--config examples/tune_minilm.toml --seed S` for each seed. Writes `table.jsonl` (one line per
run; a rerun skips the runs already there, so an interrupted table is continued, not redone)
and `table.md` (mean, min and max of the test accuracy per method and epsilon).

The settings of each method come from the grids in docs/finetuning.md. Those grids chose on
the test split, which is not private; the tuned row is the private way to choose.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))
from gpu import run_part  # noqa: E402

ADAM = 'training.optimizer={ kind = "adam", beta1 = 0.9, beta2 = 0.999, eps = 1e-8 }'

PROBE = "examples/minilm_rotten_tomatoes.toml"
FINETUNE = "examples/minilm_finetune.toml"

# name -> (what is trained, plan, overrides of the plan)
METHODS = {
    "head": ("the head on the frozen encoder (linear probe), SGD 2, C 1, 3 epochs", PROBE, []),
    "head_avg": ("the same probe, weights averaged (decay 0.9)", PROBE, ["training.average_decay=0.9"]),
    "top1": ("the top block and the head, SGD 0.5, C 1, 10 epochs, weights averaged (decay 0.9): make demo",
             FINETUNE, []),
    "top1_last": ("the same, releasing the last iterate", PROBE,
                  ['model.finetune={ kind = "top", blocks = 1 }', "training.learning_rate=0.5", "privacy.epochs=10"]),
    "lora": ("LoRA rank 8 on every linear map, and the head, Adam 3e-3, C 0.1, 3 epochs", PROBE,
             ['model.finetune={ kind = "lora", rank = 8, alpha = 16 }', ADAM,
              "training.learning_rate=0.003", "privacy.clip_norm=0.1"]),
    "all": ("every weight, Adam 1e-3, C 0.1, 10 epochs (GPU)", PROBE,
            ['model.finetune={ kind = "all" }', ADAM, "training.learning_rate=0.001",
             "privacy.clip_norm=0.1", "privacy.epochs=10"]),
}


COSINE = "training.schedule={ warmup_steps = 0, cosine = true }"
TOP1, TOP2 = 'model.finetune={ kind = "top", blocks = 1 }', 'model.finetune={ kind = "top", blocks = 2 }'

# The CPU study that chose `top1` (--study): seed 1, epsilon 8, batch 512, one change per run
# (SGD with momentum 0.9, the probe plan's optimizer, unless it says Adam). Every row is the
# probe plan with its changes, so a row means the same after the demo's plan changes.
TEN = [TOP1, "training.learning_rate=0.5", "privacy.epochs=10"]
STUDY = [
    ("head only, SGD 2, C 1, 3 epochs", PROBE, []),
    ("top 1, SGD 2, C 1, 3 epochs", PROBE, [TOP1]),
    ("top 1, SGD 1, C 1, 3 epochs", PROBE, [TOP1, "training.learning_rate=1.0"]),
    ("top 1, SGD 0.5, C 1, 3 epochs", PROBE, [TOP1, "training.learning_rate=0.5"]),
    ("top 1, SGD 0.25, C 1, 3 epochs", PROBE, [TOP1, "training.learning_rate=0.25"]),
    ("top 1, SGD 2, C 1, per-layer clipping, 3 epochs", PROBE,
     [TOP1, 'training.clipping={ kind = "per_layer" }']),
    ("top 1, Adam 1e-3, C 0.1, 3 epochs", PROBE,
     [TOP1, ADAM, "training.learning_rate=0.001", "privacy.clip_norm=0.1"]),
    ("top 1, Adam 3e-4, C 1, 3 epochs", PROBE, [TOP1, ADAM, "training.learning_rate=0.0003"]),
    ("top 1, SGD 0.5 (head 2), C 1, 3 epochs", PROBE,
     [TOP1, "training.learning_rate=0.5", "training.head_learning_rate=2.0"]),
    ("top 1, SGD 0.25 (head 2), C 1, 3 epochs", PROBE,
     [TOP1, "training.learning_rate=0.25", "training.head_learning_rate=2.0"]),
    ("top 1, SGD 0.5, C 1, 5 epochs", PROBE, [TOP1, "training.learning_rate=0.5", "privacy.epochs=5"]),
    ("top 1, SGD 0.5, C 1, 10 epochs", PROBE, TEN),
    ("top 1, SGD 0.5, C 1, 15 epochs", PROBE, TEN + ["privacy.epochs=15"]),
    ("top 1, SGD 0.5, C 1, 10 epochs, cosine decay", PROBE, TEN + [COSINE]),
    ("top 1, SGD 1, C 1, 10 epochs, cosine decay", PROBE, TEN + [COSINE, "training.learning_rate=1.0"]),
    ("top 1, SGD 0.5, C 1, 10 epochs, batch 1024", PROBE, TEN + ["privacy.expected_batch_size=1024"]),
    ("top 2, SGD 0.5, C 1, 3 epochs", PROBE, [TOP2, "training.learning_rate=0.5"]),
    ("top 1, SGD 0.5, C 1, 3 epochs, NOT PRIVATE", PROBE,
     [TOP1, "training.learning_rate=0.5", "privacy.noise=none", "privacy.epsilon=inf"]),
]


def epsilon_overrides(eps):
    if eps == "inf":
        return ["privacy.noise=none", "privacy.epsilon=inf"]
    return [f"privacy.epsilon={eps}"]


def key(record):
    return (record["method"], record["epsilon"], record["seed"])


def render(records):
    """Every method and epsilon in `records` (this and earlier invocations), epsilons ascending."""
    epsilons = sorted({r["epsilon"] for r in records}, key=float)
    methods = [m for m in list(METHODS) + ["tuned"] if any(r["method"] == m for r in records)]
    head = "| fine-tuning | " + " | ".join(
        "no noise" if e == "inf" else f"epsilon {e}" for e in epsilons) + " |"
    rows = [head, "|---" * (len(epsilons) + 1) + "|"]
    for m in methods:
        cells = []
        for e in epsilons:
            accs = [100 * r["test_accuracy"] for r in records
                    if r["method"] == m and r["epsilon"] == e and "test_accuracy" in r]
            if not accs:
                cells.append("")
            elif len(accs) == 1:
                cells.append(f"{accs[0]:.2f}")
            else:
                cells.append(f"{statistics.mean(accs):.2f} ({min(accs):.2f}-{max(accs):.2f}, n={len(accs)})")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    rows.append("")
    rows += [f"- {m}: {METHODS[m][0]}" for m in methods if m in METHODS]
    if "tuned" in methods:
        rows.append("- tuned: dp-train tune --config examples/tune_minilm.toml, total epsilon 8")
    return "\n".join(rows) + "\n"


def train_argv(args, plan, overrides, run_dir, seed):
    argv = [args.bin, "train", "--config", str(ROOT / plan), "--run-dir", str(run_dir), "--json",
            "--set", f"privacy.seed={seed}", "--set", f"performance.device={args.device}"]
    for s in overrides:
        argv += ["--set", s]
    return argv


def study(args):
    """Runs STUDY (skipping the settings already in study.jsonl); writes study.jsonl, study.md."""
    path = args.out / "study.jsonl"
    records = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
    done = {r["setting"] for r in records if "test_accuracy" in r}
    rows = ["| setting | test accuracy | steps | noise multiplier | training s |", "|---|---|---|---|---|"]
    with open(path, "a") as out, open(args.out / "study_log.txt", "a") as log:
        for k, (name, plan, overrides) in enumerate(STUDY):
            if name not in done:
                run_dir = args.runs / f"study-{k}"
                subprocess.run(["rm", "-rf", str(run_dir)], check=True)
                record = run_part(name, "finetune", args.timeout,
                                  train_argv(args, plan, overrides, run_dir, 1), {}, log)
                v = record.pop("result", None)
                record["setting"] = name
                if v:
                    record.update(test_accuracy=v["test_accuracy"], steps=v["privacy"]["steps"],
                                  noise_multiplier=v["privacy"]["noise_multiplier"],
                                  train_seconds=v["train_seconds"])
                out.write(json.dumps(record) + "\n")
                out.flush()
                records.append(record)
            r = next(r for r in reversed(records) if r["setting"] == name)
            rows.append(f"| {name} | " + (f"{100 * r['test_accuracy']:.2f}% | {r['steps']} | "
                                           f"{r['noise_multiplier']:.4f} | {r['train_seconds']:.1f} |"
                                           if "test_accuracy" in r else f"{r.get('error')} | | | |"))
            print(rows[-1], flush=True)
    # Notes written above the table (when and how the rows were measured) are kept.
    md = args.out / "study.md"
    notes = md.read_text().split("| setting |")[0] if md.exists() else ""
    md.write_text(notes + "\n".join(rows) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--bin", default=str(ROOT / "target/release/dp-train"))
    p.add_argument("--methods", default="head,top1")
    p.add_argument("--epsilons", default="1,3,8,inf")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--tuned", action="store_true", help="add the private search at total epsilon 8")
    p.add_argument("--device", default="cpu", help="performance.device of every run")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed to one run")
    p.add_argument("--runs", type=Path, default=Path("/tmp/dp-finetune-table"),
                   help="where the run folders go (models and checkpoints: large)")
    p.add_argument("--study", action="store_true",
                   help="run the CPU study that chose the settings instead (seed 1, epsilon 8)")
    args = p.parse_args()
    if args.study:
        args.out.mkdir(parents=True, exist_ok=True)
        return study(args)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    epsilons = args.epsilons.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "table.jsonl"
    records = [json.loads(l) for l in table.read_text().splitlines()] if table.exists() else []
    done = {key(r) for r in records if "test_accuracy" in r}
    jobs = [(m, e, s) for e in epsilons for s in seeds for m in methods]
    if args.tuned:
        jobs += [("tuned", "8", s) for s in seeds]
    with open(table, "a") as out, open(args.out / "table_log.txt", "a") as log:
        for method, eps, seed in jobs:
            if (method, eps, seed) in done:
                continue
            run_dir = args.runs / f"{method}-eps{eps}-seed{seed}"
            subprocess.run(["rm", "-rf", str(run_dir)], check=True)
            if method == "tuned":
                argv = [args.bin, "tune", "--config", str(ROOT / "examples/tune_minilm.toml"),
                        "--run-dir", str(run_dir), "--seed", str(seed), "--json"]
            else:
                _, plan, overrides = METHODS[method]
                argv = train_argv(args, plan, overrides + epsilon_overrides(eps), run_dir, seed)
            record = run_part(f"{method} eps {eps} seed {seed}", "finetune", args.timeout, argv, {}, log)
            record.update(method=method, epsilon=eps, seed=seed)
            v = record.pop("result", None)
            if v and method == "tuned":
                result = v["result"]
                record["total_epsilon"] = result["total_epsilon"]
                final = result.get("final_run") or result.get("chosen")
                if final:  # none when the random number of runs was 0: nothing released
                    record.update(test_accuracy=final["test_accuracy"], chosen=result["chosen"])
                else:
                    record["error"] = "no run drawn: nothing released"
            elif v:
                record.update(test_accuracy=v["test_accuracy"], noise_multiplier=v["privacy"]["noise_multiplier"],
                              steps=v["privacy"]["steps"], train_seconds=v["train_seconds"])
            out.write(json.dumps(record) + "\n")
            out.flush()
            records.append(record)
            print(f"{method} eps {eps} seed {seed}: "
                  + (f"{100 * record['test_accuracy']:.2f}%" if "test_accuracy" in record else record.get("error", "?"))
                  + f" ({record['seconds']} s)", flush=True)
            (args.out / "table.md").write_text(render(records))
    (args.out / "table.md").write_text(render(records))
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
