"""Anchor: Opacus per-sample clipping and non-private PyTorch on a BERT-base classifier.

  python3 benches/opacus_bert.py BATCH SEQ

Prints one JSON line per mode: median samples/s and step time over the timed steps, and the
peak GPU memory allocated from the model's creation on (torch.cuda.max_memory_allocated after a
reset). fp32 with TF32 off (as libtorch's default for our binary), AdamW, the same random token
batches for every mode; position and token-type ids are passed per example (Opacus needs them).

Environment: MODES (comma-separated, of nonprivate, hooks, ghost, functorch; default the first
three), DEV (cuda or cpu), SMALL=1 (a two-layer width-64 BERT, for dry runs), STEPS and WARM
(timed and warm-up steps, default 8 and 3).
"""
import json
import os
import sys
import time
import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
DEV = os.environ.get("DEV", "cuda")
MODES = os.environ.get("MODES", "nonprivate,hooks,ghost").split(",")
B = int(sys.argv[1]) if len(sys.argv) > 1 else 32
T = int(sys.argv[2]) if len(sys.argv) > 2 else 128
STEPS = int(os.environ.get("STEPS", 8))
WARM = int(os.environ.get("WARM", 3))


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def make_model():
    from transformers import BertConfig, BertForSequenceClassification
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    config = BertConfig(num_labels=2, **(small if os.environ.get("SMALL") else {}))
    torch.manual_seed(0)
    return BertForSequenceClassification(config).to(DEV)


def dataset():
    g = torch.Generator().manual_seed(0)
    n = B * (STEPS + WARM)
    ids = torch.randint(0, 30000, (n, T), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    return torch.utils.data.TensorDataset(ids, labels)


def extra(ids):
    b, t = ids.shape
    return {"position_ids": torch.arange(t, device=ids.device).expand(b, t).contiguous(),
            "token_type_ids": torch.zeros_like(ids)}


def timed(step, loader):
    times = []
    for i, (ids, y) in enumerate(loader):
        ids, y = ids.to(DEV), y.to(DEV)
        sync()
        start = time.perf_counter()
        step(ids, y)
        sync()
        if i >= WARM:
            times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() if DEV == "cuda" else None
    return {"samples_per_s": round(B / median, 1), "step_s": median, "peak_allocated_bytes": peak}


def run(mode):
    if DEV == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(dataset(), batch_size=B)
    if mode != "nonprivate":
        from opacus import PrivacyEngine
        made = PrivacyEngine().make_private(
            module=model, optimizer=optimizer, data_loader=loader, criterion=criterion,
            noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode=mode)
        if len(made) == 4:
            model, optimizer, criterion, loader = made
        else:
            model, optimizer, loader = made

    def step(ids, y):
        optimizer.zero_grad(set_to_none=True)
        criterion(model(input_ids=ids, **extra(ids)).logits, y).backward()
        optimizer.step()
    return timed(step, loader)


for mode in MODES:
    try:
        result = run(mode)
    except Exception as e:  # report and go on with the next mode
        result = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    result.update({"mode": mode, "batch": B, "seq": T})
    print(json.dumps(result), flush=True)
