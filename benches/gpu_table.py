"""The side-by-side table of a GPU run (`benches/gpu.py`): ours vs Opacus vs non-private PyTorch.

  python3 benches/gpu_table.py results.jsonl     # prints the markdown table

Throughput ratios are DP samples/s over non-private samples/s. Ours are measured within one
process, round by round against our own non-private step of the same encoder; Opacus's against
PyTorch's non-private step in its own process. "vs PyTorch" divides our DP samples/s by PyTorch's
non-private samples/s from the same run (two processes, same GPU, same shape and batch).
Memory is the peak allocated on the GPU from the model's creation on.
"""
import json
import sys

GIB = 2**30


def _f(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def _opacus(records, seq):
    for r in records:
        if r.get("kind") == "opacus" and r.get("part", "").endswith(f"seq {seq}"):
            return {m["mode"]: m for m in r.get("result", []) if "error" not in m}
    return {}


def _step_table(records):
    rows = [
        "| model | seq | activations | ours non-private samples/s | ours DP samples/s (secure / fast / clip only) "
        "| ours DP / non-private (secure / fast / clip only) | noise share of DP step (secure / fast) "
        "| GPU peak GiB non-private / DP secure / DP fast (ratio) | PyTorch non-private samples/s "
        "| ours DP fast vs PyTorch | Opacus hooks samples/s (ratio) | Opacus ghost samples/s (ratio) "
        "| Opacus peak GiB non-private / hooks / ghost |",
        "|" + "---|" * 13,
    ]
    for r in records:
        if r.get("kind") != "ours":
            continue
        v = r.get("result")
        if not v:
            rows.append(f"| {r['part']} | | | {r.get('error', '')} |" + " |" * 9)
            continue
        b = v["batch"]
        sps = lambda s: None if s is None else b / s  # noqa: E731
        dp = v["dp_step_s"]
        ratio = v["throughput_ratio"]
        share = v.get("noise_share_of_dp_step", {})
        mem = v.get("device_peak_allocated_bytes", {})
        mem_ratio = v.get("device_peak_memory_ratio", {})
        gib = lambda k: None if k not in mem else mem[k] / GIB  # noqa: E731
        memory = (f"{_f(gib('nonprivate'))} / {_f(gib('secure'))} / {_f(gib('fast'))} "
                  f"({_f(mem_ratio.get('secure'))} / {_f(mem_ratio.get('fast'))})")
        op = _opacus(records, v["seq"]) if v["precision"] == "f32" and v["shape"] == "bert-base" else {}
        torch_sps = op.get("nonprivate", {}).get("samples_per_s")
        ours_vs_torch = None if torch_sps is None else sps(dp.get("fast")) / torch_sps

        def opacus_cell(mode):
            m = op.get(mode)
            if not m or torch_sps is None:
                return "-"
            return f"{m['samples_per_s']:.0f} ({m['samples_per_s'] / torch_sps:.2f})"

        op_mem = " / ".join(_f(None if not op.get(m, {}).get("peak_allocated_bytes") else
                               op[m]["peak_allocated_bytes"] / GIB) for m in ["nonprivate", "hooks", "ghost"])
        rows.append(
            f"| {v['shape']} | {v['seq']} | {v['precision']} | {_f(sps(v['nonprivate_step_s']), 0)} "
            f"| {_f(sps(dp.get('secure')), 0)} / {_f(sps(dp.get('fast')), 0)} / {_f(sps(dp.get('clip_only')), 0)} "
            f"| {_f(ratio.get('secure'))} / {_f(ratio.get('fast'))} / {_f(ratio.get('clip_only'))} "
            f"| {_f(share.get('secure'))} / {_f(share.get('fast'))} | {memory} | {_f(torch_sps, 0)} "
            f"| {_f(ours_vs_torch)} | {opacus_cell('hooks')} | {opacus_cell('ghost')} | {op_mem} |")
    return rows


def _noise_table(records):
    rows = ["| model | seq | activations | coordinates | fast release s | secure release s (host draw + copy + release) "
            "| secure on device = host, bit for bit |", "|---|---|---|---|---|---|---|"]
    for r in records:
        v = r.get("result") if r.get("kind") == "ours" else None
        d = (v or {}).get("device_noise")
        if d:
            rows.append(f"| {v['shape']} | {v['seq']} | {v['precision']} | {v['noise_coordinates']} "
                        f"| {d['fast_release_s']:.4f} | {d['secure_release_s']:.4f} | {d['secure_matches_host']} |")
    return rows if len(rows) > 2 else []


def _finetune_table(records):
    rows = ["| run | test accuracy | epsilon | steps | train s | samples/s |", "|---|---|---|---|---|---|"]
    for r in records:
        if r.get("kind") != "finetune":
            continue
        v = r.get("result")
        if not v:
            rows.append(f"| {r['part']} | {r.get('error', '')} | | | | |")
            continue
        p = v["privacy"]
        steps, batch = p["steps"], p["sampling_rate"] * p["dataset_size"]
        eps = "NOT PRIVATE" if not v["private"] else p["epsilon"]
        rows.append(f"| {r['part']} | {100 * v['test_accuracy']:.2f}% | {eps} | {steps} "
                    f"| {v['train_seconds']:.1f} | {steps * batch / v['train_seconds']:.0f} |")
    return rows


def _blt_rows(records):
    out = []
    for r in records:
        if r.get("kind") == "blt":
            v = r.get("result")
            if v:
                out.append(f"- {v['shape']} batch {v['batch']} seq {v['seq']}: DP step with independent noise "
                           f"{v['independent_dp_step_s']:.4f} s, with BLT noise ({v['buffers']} buffers) "
                           f"{v['correlated_dp_step_s']:.4f} s ({100 * v['correlated_overhead']:+.1f}%)")
            else:
                out.append(f"- {r['part']}: {r.get('error')}")
    return out


def render(records):
    lines = ["# GPU run", ""]
    machine = next((r.get("result") for r in records if r.get("kind") == "machine"), None)
    if machine:
        lines += [f"Machine: {json.dumps(machine)}", ""]
    lines += ["## DP step vs non-private step", ""] + _step_table(records) + [""]
    noise = _noise_table(records)
    if noise:
        lines += ["## Noise on the device (not overlapped)", ""] + noise + [""]
    lines += ["## Fine-tuning MiniLM on Rotten Tomatoes", ""] + _finetune_table(records) + [""]
    lines += ["## Correlated noise", ""] + _blt_rows(records) + [""]
    failed = [f"- {r['part']}: {r['error']}" for r in records if "error" in r]
    if failed:
        lines += ["## Parts that did not complete", ""] + failed + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(render([json.loads(line) for line in f if line.strip()]))
