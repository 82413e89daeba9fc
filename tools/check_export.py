"""Loads a `dp-train export` folder with Hugging Face transformers, exactly as its model card
says, and compares the class probabilities with `dp-train predict --json` on the same texts.

An independent check of the export: another implementation of BERT (transformers' BertModel,
its tokenizer from the exported files) reading the exported weights must reproduce the
probabilities of the trained model (LoRA adapters unmerged) that dp-train computes.

    dp-train predict RUN_DIR --json --input texts.txt > predictions.jsonl
    python tools/check_export.py EXPORT_DIR predictions.jsonl

Needs torch, transformers and safetensors (not installed by the setup script).
"""

import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer


def main(folder, predictions):
    rows = [json.loads(line) for line in open(predictions) if line.strip()]
    texts = [r["text"] for r in rows]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = AutoModel.from_pretrained(folder).eval()
    head = load_file(f"{folder}/model.safetensors")
    config = json.load(open(f"{folder}/config.json"))
    names = [config["id2label"][str(k)] for k in range(len(config["id2label"]))]
    batch = tokenizer(texts, padding=True, truncation=True,
                      max_length=config["dp_train_head"]["max_length"], return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    logits = pooled @ head["classifier.weight"].T + head["classifier.bias"]
    probabilities = logits.softmax(-1)
    gap = 0.0
    agree = 0
    for row, p in zip(rows, probabilities):
        want = torch.tensor([row["probabilities"][n] for n in names])
        gap = max(gap, (p - want).abs().max().item())
        agree += names[int(p.argmax())] == row["label"]
    print(f"{len(rows)} texts: labels agree on {agree}, "
          f"largest probability difference {gap:.2e}")
    sys.exit(0 if agree == len(rows) and gap < 1e-4 else 1)


if __name__ == "__main__":
    main(*sys.argv[1:])
