"""The Python peer of `maskflow detect`: facenet-pytorch's MTCNN (keep_all, its defaults) + the
bundle's TorchScript classifier, on the same photos, the way one would write it in Python: PIL
decode, detect, the same square crop on each box (margin 0), PIL bilinear resize to the bundle's
input, all faces of a group of photos classified in one batch.

usage: detect_py.py BUNDLE OUT_JSONL PHOTO... (threads: $THREADS, default 2)
Prints `photos S faces F seconds T photos_per_s R`.
"""
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from facenet_pytorch import MTCNN

bundle, out, photos = sys.argv[1], sys.argv[2], sys.argv[3:]
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
card = json.load(open(os.path.join(bundle, "model_card.json")))
size, classes = card["input"]["height"], card["classes"]
model = torch.jit.load(os.path.join(bundle, "model.pt")).eval()
mtcnn = MTCNN(keep_all=True, device="cpu")


def region(w, h, b):
    side = round(max(b[2] - b[0], b[3] - b[1]))
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    l0, t0 = round(cx - side / 2), round(cy - side / 2)
    clip = lambda v, hi: int(min(max(v, 0), hi))
    return clip(l0, w), clip(t0, h), clip(l0 + side, w), clip(t0 + side, h)


t0 = time.perf_counter()
records, nfaces = [], 0
for start in range(0, len(photos), 32):
    group = []
    for p in photos[start:start + 32]:
        img = Image.open(p).convert("RGB")
        boxes, probs, points = mtcnn.detect(img, landmarks=True)
        crops, faces = [], []
        for b, s, lm in zip(boxes if boxes is not None else [], probs if boxes is not None else [], points if boxes is not None else []):
            l, t, r, bt = region(img.width, img.height, b)
            if r <= l or bt <= t:
                continue
            crops.append(np.asarray(img.crop((l, t, r, bt)).resize((size, size), Image.BILINEAR)))
            faces.append({"box": [float(v) for v in b], "score": float(s)})
        group.append((p, faces, crops))
    allcrops = [c for _, _, cs in group for c in cs]
    probs = []
    if allcrops:
        with torch.no_grad():
            y = model(torch.from_numpy(np.stack(allcrops)))
        probs = y.float().tolist()
    k = 0
    for p, faces, _ in group:
        for f in faces:
            f["probabilities"] = dict(zip(classes, probs[k]))
            f["label"] = classes[int(np.argmax(probs[k]))]
            k += 1
        nfaces += len(faces)
        records.append({"path": p, "faces": faces})
dt = time.perf_counter() - t0
with open(out, "w") as f:
    for r in records:
        f.write(json.dumps(r) + "\n")
print(f"photos {len(photos)} faces {nfaces} seconds {dt:.2f} photos_per_s {len(photos) / dt:.2f}")
