"""Multi-face test scenes for `maskflow detect` and its benchmark: real faces from a labelled
folder (e.g. the face-mask dataset) pasted at several sizes onto a textured background.

usage: detect_scenes.py DATASET OUT N [--width 640] [--height 480] [--faces 1-5] [--seed 0]

Writes OUT/scene-NNN.jpg (quality 92) and OUT/scenes.json: per scene, each pasted face's class
folder, source file and pasted box. The faces are the dataset's pictures as they are (tight crops),
resized so the longer side is 12–30% of the scene's width, not overlapping.
"""
import argparse
import json
import os
import random

import numpy as np
from PIL import Image

ap = argparse.ArgumentParser()
ap.add_argument("dataset")
ap.add_argument("out")
ap.add_argument("n", type=int)
ap.add_argument("--width", type=int, default=640)
ap.add_argument("--height", type=int, default=480)
ap.add_argument("--faces", default="1-5")
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()
lo, hi = map(int, a.faces.split("-"))
rng = random.Random(a.seed)
files = []
for cls in sorted(os.listdir(a.dataset)):
    d = os.path.join(a.dataset, cls)
    if os.path.isdir(d):
        files += [(cls, os.path.join(d, f)) for f in sorted(os.listdir(d)) if f.lower().endswith((".jpg", ".jpeg", ".png"))]
os.makedirs(a.out, exist_ok=True)
W, H = a.width, a.height
yy, xx = np.mgrid[0:H, 0:W]
scenes = []
for i in range(a.n):
    phase = rng.random() * 6
    bg = np.stack([120 + 40 * np.sin(xx / 41.0 + phase), 125 + 30 * np.cos(yy / 29.0 + phase), 115 + 25 * np.sin((xx + yy) / 57.0)], -1)
    scene = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    placed = []
    want = rng.randint(lo, hi)
    tries = 0
    while len(placed) < want and tries < 200:
        tries += 1
        cls, path = rng.choice(files)
        try:
            face = Image.open(path).convert("RGB")
        except Exception:
            continue
        side = int(W * rng.uniform(0.12, 0.30))
        s = side / max(face.size)
        fw, fh = max(1, round(face.width * s)), max(1, round(face.height * s))
        if fw >= W or fh >= H:
            continue
        x, y = rng.randint(0, W - fw), rng.randint(0, H - fh)
        if any(x < px + pw and px < x + fw and y < py + ph and py < y + fh for (_, _, (px, py, pw, ph)) in placed):
            continue
        scene.paste(face.resize((fw, fh), Image.BILINEAR), (x, y))
        placed.append((cls, path, (x, y, fw, fh)))
    name = f"scene-{i:03d}.jpg"
    scene.save(os.path.join(a.out, name), quality=92)
    scenes.append({"file": name, "faces": [{"class": c, "source": p, "box": [x, y, x + w, y + h]} for c, p, (x, y, w, h) in placed]})
with open(os.path.join(a.out, "scenes.json"), "w") as f:
    json.dump(scenes, f, indent=1)
print(f"{a.n} scenes, {sum(len(s['faces']) for s in scenes)} faces → {a.out}")
