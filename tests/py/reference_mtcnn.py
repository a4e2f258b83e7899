"""References for maskflow's MTCNN (crates/maskflow-models/src/mtcnn.rs): facenet-pytorch 2.6.0's
MTCNN (installed --no-deps in the project venv) on real, public-domain photos that scikit-image
ships (installed --no-deps for its data folder only).

usage: reference_mtcnn.py OUT_DIR [PNET RNET ONET]

Writes OUT_DIR/<name>.png for each test photo and OUT_DIR/detections.json: per photo, facenet-pytorch's
`MTCNN(keep_all=True).detect(img, landmarks=True)` with its defaults (largest face first) — boxes,
probabilities, landmarks. The photos:
  astronaut  skimage's astronaut (512×512, one face)
  crowd      a 1000×700 composite: the astronaut's face at five sizes (≈200 to ≈40 px) and mirrored,
             on a textured background, so several faces of different scales share one photo
  camera     skimage's cameraman (512×512 gray, stored as RGB: a face in profile-ish view)
  coffee     skimage's coffee cup (400×600, no face)
"""
import json
import os
import sys

import numpy as np
from PIL import Image
import importlib.util
from facenet_pytorch import MTCNN

out = sys.argv[1]
# skimage is installed without its dependencies: find its data folder without importing it.
data = os.path.join(importlib.util.find_spec("skimage").submodule_search_locations[0], "data")


def load(name):
    return Image.open(os.path.join(data, name)).convert("RGB")


astronaut = load("astronaut.png")
face = astronaut.crop((140, 20, 310, 215))  # the head with some margin (170×195)
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:700, 0:1000]
bg = np.stack([120 + 40 * np.sin(xx / 37.0), 130 + 30 * np.cos(yy / 23.0), 110 + 20 * np.sin((xx + yy) / 51.0)], -1)
bg = np.clip(bg + rng.normal(0, 6, bg.shape), 0, 255).astype(np.uint8)
crowd = Image.fromarray(bg)
for scale, (x, y), mirror in [(1.2, (30, 40), False), (0.8, (330, 80), True), (0.55, (560, 60), False),
                               (0.38, (760, 90), False), (0.25, (880, 300), True), (0.6, (420, 420), False)]:
    f = face.resize((round(face.width * scale), round(face.height * scale)), Image.BILINEAR)
    if mirror:
        f = f.transpose(Image.FLIP_LEFT_RIGHT)
    crowd.paste(f, (x, y))

photos = {"astronaut": astronaut, "crowd": crowd, "camera": load("camera.png"), "coffee": load("coffee.png")}
mtcnn = MTCNN(keep_all=True, device="cpu")
result = {}
for name, img in photos.items():
    img.save(os.path.join(out, name + ".png"))
    boxes, probs, points = mtcnn.detect(img, landmarks=True)
    if boxes is None:
        result[name] = {"boxes": [], "probs": [], "landmarks": []}
    else:
        result[name] = {"boxes": boxes.tolist(), "probs": [float(p) for p in probs], "landmarks": points.tolist()}
with open(os.path.join(out, "detections.json"), "w") as f:
    json.dump(result, f, indent=1)
print(json.dumps({k: len(v["boxes"]) for k, v in result.items()}))
