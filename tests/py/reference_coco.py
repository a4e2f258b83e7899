"""Reference for maskflow's detection metrics (crates/maskflow-annotations/src/metrics.rs):
pycocotools' COCOeval (bbox) on generated faces and detections.

usage: reference_coco.py OUT_DIR

Writes OUT_DIR/coco.json: the faces (`truth`: photo, class, [x1, y1, x2, y2], crowd) and detections
(`detections`: photo, class, box, score) as maskflow takes them, and what COCOeval computes with
maxDets 100: `stats` (its summarize() numbers 0–5 and 8–11: AP, AP50, AP75, AP small/medium/large,
AR@100, AR small/medium/large), `per_class_ap` (AP@[.5:.95], all areas) and the whole precision
array [T][R][K][A] (-1 where a class has no face in the range).

The photos: 40, three classes, 0–8 faces each of sizes from 8 to 240 px (all three COCO size
ranges), some crowd; detections: most faces found with a jittered box and a score that depends on
the jitter, some twice, some missed, false positives, tied scores. Box corners are multiples of
1/4, so that the box arithmetic is exact on both sides.
"""
import json
import os
import sys

import numpy as np

from cocoutil import cocoeval

out = sys.argv[1]
rng = np.random.default_rng(25)
q = lambda v: float(np.round(v * 4) / 4)  # noqa: E731

photos, classes = 40, 3
truth, dets = [], []
for p in range(photos):
    for _ in range(rng.integers(0, 9)):
        side = float(rng.choice([8, 14, 20, 28, 36, 50, 70, 90, 110, 160, 240]))
        w, h = q(side * rng.uniform(0.8, 1.2)), q(side * rng.uniform(0.9, 1.3))
        x, y = q(rng.uniform(0, 640 - w)), q(rng.uniform(0, 480 - h))
        k = int(rng.integers(0, classes))
        crowd = bool(rng.random() < 0.05)
        truth.append({"photo": p, "class": k, "bbox": [x, y, x + w, y + h], "crowd": crowd})
        for _ in range(1 if rng.random() < 0.85 else 0 if rng.random() < 0.5 else 2):
            j = rng.normal(0, 0.12, 4) * [w, h, w, h]
            b = [q(x + j[0]), q(y + j[1]), q(x + w + j[2]), q(y + h + j[3])]
            if b[2] - b[0] < 1 or b[3] - b[1] < 1:
                continue
            kk = k if rng.random() < 0.9 else int(rng.integers(0, classes))
            score = float(np.round(max(0.01, 1 - np.abs(j).sum() / (w + h) + rng.normal(0, 0.1)), 2))
            dets.append({"photo": p, "class": kk, "bbox": b, "score": score})
    for _ in range(rng.integers(0, 3)):
        w = q(rng.uniform(6, 120))
        x, y = q(rng.uniform(0, 600 - w)), q(rng.uniform(0, 440 - w))
        dets.append({"photo": p, "class": int(rng.integers(0, classes)), "bbox": [x, y, x + w, y + w],
                     "score": float(np.round(rng.uniform(0.01, 0.9), 2))})

ev = cocoeval(truth, dets, photos, classes)
prec = ev.eval["precision"][:, :, :, :, 2]  # maxDets 100
per_class = []
for k in range(classes):
    s = prec[:, :, k, 0]
    per_class.append(float(np.mean(s[s > -1])) if (s > -1).any() else None)
with open(os.path.join(out, "coco.json"), "w") as f:
    json.dump({"truth": truth, "detections": dets, "stats": [float(v) for v in ev.stats],
               "per_class_ap": per_class, "precision": prec.tolist()}, f)
print(len(truth), "faces,", len(dets), "detections; AP", round(ev.stats[0], 4))
