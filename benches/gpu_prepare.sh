#!/usr/bin/env bash
# Fills gpu/ (git-ignored) with what benches/gpu.sh needs on a CUDA machine without Rust or
# network access: the release binary, the fine-tuning's assets and the Opacus 1.6.0 wheel.
# The MiniLM weights travel as float16 (half the size; the loader widens them back to f32, so
# the GPU fine-tuning starts from weights rounded to a relative 2^-11).
set -euo pipefail
cd "$(dirname "$0")/.."
make build >/dev/null
rm -rf gpu
mkdir -p gpu/assets/minilm gpu/assets/rotten-tomatoes gpu/wheels
cp target/release/dp-train gpu/
cp assets/minilm/config.json assets/minilm/tokenizer.json assets/minilm/vocab.txt gpu/assets/minilm/
cp assets/rotten-tomatoes/rotten_tomatoes_corpus_full.csv gpu/assets/rotten-tomatoes/
.venv/bin/python - assets/minilm/model.safetensors gpu/assets/minilm/model.safetensors <<'PY'
import ctypes, json, struct, sys
import torch
src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
out_header, chunks, offset = {}, [], 0
for name, entry in header.items():
    if name == "__metadata__":
        out_header[name] = entry
        continue
    start, end = entry["data_offsets"]
    raw = data[start:end]
    if entry["dtype"] == "F32":
        half = torch.frombuffer(bytearray(raw), dtype=torch.float32).to(torch.float16)
        raw = ctypes.string_at(half.data_ptr(), half.nbytes)
        entry = {**entry, "dtype": "F16"}
    out_header[name] = {**entry, "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
blob = json.dumps(out_header).encode()
blob += b" " * (-len(blob) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for c in chunks:
        f.write(c)
PY
.venv/bin/pip download -q --disable-pip-version-check --no-deps -d gpu/wheels opacus==1.6.0
du -sh gpu
