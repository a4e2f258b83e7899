"""Python peer of bench_predict: the same TorchScript bundle driven from Python, with PIL doing the
same preprocessing (EXIF transpose, RGB, shorter side → size with antialiased bilinear, centre crop).
Prints one JSON line: single-image latency p50/p95 and batch-64 throughput over the first N images.

usage: predict_py.py BUNDLE FOLDER [N] [THREADS]
"""
import json
import pathlib
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageOps

bundle, folder = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 256
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
card = json.loads((bundle / "model_card.json").read_text())
size = card["input"]["height"]
module = torch.jit.load(str(bundle / "model.pt"))
files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.relative_to(folder).parts))[:n]


def prepare(path):
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    w, h = img.size
    r = size / min(w, h)
    img = img.resize((max(size, round(w * r)), max(size, round(h * r))), Image.BILINEAR)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def run(paths):
    x = torch.from_numpy(np.stack([prepare(p) for p in paths]))
    with torch.no_grad():
        return module(x)


run(files[:4])
lat = []
for f in files[:100]:
    t = time.perf_counter()
    run([f])
    lat.append((time.perf_counter() - t) * 1e3)
lat.sort()
t = time.perf_counter()
done = 0
for i in range(0, len(files), 64):
    done += len(run(files[i:i + 64]))
thr = done / (time.perf_counter() - t)
pct = lambda q: lat[round((len(lat) - 1) * q)]
print(json.dumps({"p50_ms": pct(0.5), "p95_ms": pct(0.95), "batch_images_per_s": thr, "images": done}))
