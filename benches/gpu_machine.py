"""Prints one JSON line describing the machine: GPU, driver, PyTorch and CPU count (what can be
read; a machine without a GPU or without torch says so)."""
import json
import os
import subprocess

info = {"cpus": os.cpu_count()}
try:
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20)
    info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
except (OSError, subprocess.TimeoutExpired) as e:
    info["nvidia_smi"] = f"unavailable: {e}"
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
except ImportError:
    info["torch"] = None
print(json.dumps(info))
