"""The prepared GPU run: every GPU check of the toolkit in one command, under 8 minutes.

Runs, in order of importance, each part under its own time limit and all of them under one
deadline (a part that fails or runs out of time is recorded and the next one runs):

  1. the machine (GPU, driver, PyTorch);
  2. `dp-train bench --device cuda` (DP with secure, fast and no noise against a non-private step
     of the same encoder, per-mode peak GPU memory, noise on the device) for BERT-base at batch
     32, seq 128 and 512, f32 and bf16 activations, and MiniLM at seq 128;
  3. Opacus 1.6 (hooks and ghost clipping) and non-private PyTorch on the same BERT-base shapes
     (`benches/opacus_bert.py`), in the same run;
  4. a short full fine-tuning of MiniLM on Rotten Tomatoes at epsilon 8 and without noise
     (`examples/minilm_rotten_tomatoes_gpu.toml`): test accuracy and samples/s;
  5. a DP step with correlated (BLT) noise against one with independent noise.

Writes `results.jsonl` (one line per part), `table.md` (the side-by-side table) and `log.txt`
(what each part printed on stderr) under the output folder, and prints the table.

  python3 benches/gpu.py --out DIR [--bin target/release/dp-train] [--dry-run]

`--dry-run` runs every part on the CPU with tiny shapes (the test suite does, so the script
cannot rot); Opacus parts are skipped there unless torch, transformers and opacus import.
`benches/gpu.sh` is the one command to run on the GPU machine.
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
import gpu_table  # noqa: E402

# The GPU fine-tuning plan cut down for a dry run on the CPU: 64 examples of 8 tokens, 2 steps.
TINY_PLAN = ["performance.device=cpu", "data.dataset_size=64", "data.max_length=8",
             "privacy.expected_batch_size=16", "privacy.epochs=0.5", "performance.physical_batch_size=16",
             "model.precision=f32"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="results folder (created)")
    p.add_argument("--bin", default=str(ROOT / "target/release/dp-train"), help="the dp-train binary")
    p.add_argument("--python", default=sys.executable, help="python with torch, transformers and opacus")
    p.add_argument("--deadline", type=float, default=480.0, help="seconds for all parts together")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU")
    p.add_argument("--extras", action="store_true",
                   help="after the main parts, more fine-tuning runs (seeds 2 and 3, epsilon 3 and 1) until the deadline")
    return p.parse_args()


def parts(args, runs):
    """(name, kind, seconds, argv, env) in order of importance."""
    b = args.bin
    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    batch = "2" if dry else "32"
    out = []
    out.append(("machine", "machine", 60, [args.python, str(ROOT / "benches/gpu_machine.py")], {}))

    def ours(shape, seq, precision, seconds):
        shape, seq = ("minilm", "8") if dry else (shape, str(seq))
        argv = [b, "bench", "--shape", shape, "--batch", batch, "--seq", seq,
                "--device", device, "--precision", precision, "--noise", "both",
                "--steps", "1" if dry else "5", "--json"]
        return (f"ours {shape} seq {seq} {precision}", "ours", seconds, argv, {})

    def opacus(seq, seconds):
        seq = "8" if dry else str(seq)
        env = {"DEV": device, "MODES": "nonprivate,hooks,ghost"}
        if dry:
            env.update({"SMALL": "1", "STEPS": "2", "WARM": "1"})
        argv = [args.python, str(ROOT / "benches/opacus_bert.py"), batch, seq]
        return (f"opacus bert-base seq {seq}", "opacus", seconds, argv, env)

    def finetune(noise, seconds, epsilon=8, seed=1, workers=1):
        argv = [b, "train", "--config", str(ROOT / "examples/minilm_rotten_tomatoes_gpu.toml"),
                "--run-dir", str(runs / f"minilm-{noise}-{epsilon}-{seed}-{workers}"), "--json",
                "--set", f"privacy.seed={seed}"]
        if workers > 1:
            # Data-parallel on the one GPU: the collectives' CUDA path, on a plan cut to 2000
            # examples (4 steps) unless dry.
            argv += ["--workers", str(workers)]
            if not dry:
                argv += ["--set", "data.dataset_size=2000", "--set", "privacy.epochs=1"]
        if noise == "none":
            argv += ["--set", "privacy.noise=none", "--set", "privacy.epsilon=inf"]
        else:
            argv += ["--set", f"privacy.epsilon={epsilon}"]
        if dry:
            for s in TINY_PLAN:
                argv += ["--set", s]
        what = "no noise" if noise == "none" else f"epsilon {epsilon}"
        workers_note = f", {workers} processes" if workers > 1 else ""
        return (f"fine-tune minilm, {what}, seed {seed}{workers_note}", "finetune", seconds, argv, {})

    out.append(ours("bert-base", 128, "f32", 100))
    out.append(opacus(128, 150))
    out.append(ours("bert-base", 512, "f32", 120))
    out.append(opacus(512, 150))
    out.append(ours("bert-base", 128, "bf16", 100))
    out.append(ours("bert-base", 512, "bf16", 120))
    out.append(ours("minilm", 128, "f32", 60))
    out.append(finetune("gaussian", 150))
    out.append(finetune("none", 150))
    blt = [b, "bench", "--shape", "minilm" if dry else "bert-base", "--batch", batch,
           "--seq", "8" if dry else "128", "--device", device, "--correlated", "4",
           "--steps", "1" if dry else "5", "--json"]
    out.append(("BLT correlated noise", "blt", 60, blt, {}))
    out.append(finetune("gaussian", 120, workers=2))
    if args.extras:
        # More seeds and budgets of the same fine-tuning, while the deadline allows.
        for noise, epsilon, seed in [("gaussian", 8, 2), ("none", 8, 2), ("gaussian", 8, 3), ("none", 8, 3),
                                     ("gaussian", 3, 1), ("gaussian", 1, 1), ("gaussian", 3, 2),
                                     ("gaussian", 1, 2), ("gaussian", 3, 3), ("gaussian", 1, 3)]:
            out.append(finetune(noise, 150, epsilon, seed))
    if dry:
        # Tiny shapes make several configurations the same one: run each once.
        seen = set()
        out = [p for p in out if p[1] != "ours" or not (p[0] in seen or seen.add(p[0]))]
    return out


def run_part(name, kind, seconds, argv, env, log):
    started = time.monotonic()
    record = {"part": name, "kind": kind}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds,
                              env={**os.environ, **env})
        record["seconds"] = round(time.monotonic() - started, 1)
        log.write(f"== {name} (exit {proc.returncode}, {record['seconds']} s)\n{proc.stderr[-4000:]}\n")
        lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
        if proc.returncode != 0:
            record["error"] = f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
        if lines:
            record["result"] = lines if kind == "opacus" else lines[-1]
        elif "error" not in record:
            record["error"] = "no JSON output"
    except subprocess.TimeoutExpired as e:
        record["seconds"] = round(time.monotonic() - started, 1)
        record["error"] = f"timed out after {seconds:.0f} s"
        partial = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        lines = [json.loads(l) for l in partial.splitlines() if l.startswith("{")]
        if lines and kind == "opacus":
            record["result"] = lines
        log.write(f"== {name} (timed out)\n")
    except (OSError, json.JSONDecodeError) as e:
        record["error"] = f"{type(e).__name__}: {e}"
        log.write(f"== {name} ({record['error']})\n")
    log.flush()
    return record


def main():
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = Path(os.environ.get("DP_GPU_RUNS", "/tmp/dp-gpu-runs"))
    if runs.exists():
        subprocess.run(["rm", "-rf", str(runs)], check=True)
    runs.mkdir(parents=True)
    deadline = time.monotonic() + args.deadline
    records = []
    with open(args.out / "log.txt", "w") as log, open(args.out / "results.jsonl", "w") as results:
        for name, kind, seconds, argv, env in parts(args, runs):
            left = deadline - time.monotonic()
            if left < 10:
                record = {"part": name, "kind": kind, "error": "skipped: the run's deadline was reached"}
            elif kind == "opacus" and not opacus_available(args.python):
                record = {"part": name, "kind": kind, "error": "skipped: torch, transformers or opacus does not import"}
            else:
                record = run_part(name, kind, min(seconds, left), argv, env, log)
                if kind == "ours" and "result" not in record and "timed out" not in record["error"]:
                    # Keep the fast-noise and clipping-only columns if the secure path failed.
                    records.append(record)
                    results.write(json.dumps(record) + "\n")
                    fast = [a if a != "both" else "fast" for a in argv]
                    left = deadline - time.monotonic()
                    record = run_part(name + " (fast noise only)", kind, min(seconds, left), fast, env, log)
            records.append(record)
            results.write(json.dumps(record) + "\n")
            results.flush()
            print(f"[gpu] {name}: {record.get('error', 'ok')} ({record.get('seconds', 0)} s)", flush=True)
    table = gpu_table.render(records)
    (args.out / "table.md").write_text(table)
    print(table)
    failed = [r["part"] for r in records if "error" in r and not r["error"].startswith("skipped")]
    return 1 if failed else 0


_OPACUS = {}


def opacus_available(python):
    if python not in _OPACUS:
        probe = subprocess.run([python, "-c", "import torch, transformers, opacus"], capture_output=True)
        _OPACUS[python] = probe.returncode == 0
    return _OPACUS[python]


if __name__ == "__main__":
    sys.exit(main())
