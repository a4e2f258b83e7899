"""pycocotools' COCOeval (bbox, maxDets 100) on a deteval artifact's `detections.json` — the faces
and detections exactly as maskflow scored them — for faces as one class (`faces`, every detection)
and per class (`truth`: a face of a class the labeller lacks is a crowd face in each class).

usage: cocoeval_scored.py DETECTIONS_JSON   (prints JSON: {"faces": stats, "classes": stats, "per_class_ap50": [...]})
`stats` are summarize()'s 12 numbers (-1 where nothing counts).
"""
import json
import sys

import numpy as np

from cocoutil import cocoeval

s = json.load(open(sys.argv[1]))


def evaluate(one_class):
    k = 1 if one_class else len(s["classes"])
    truth = s["faces"] if one_class else s["truth"]
    dets = [dict(d, **{"class": 0}) for d in s["detections"]] if one_class else s["detections"]
    ev = cocoeval(truth, dets, len(s["images"]), k)
    prec = ev.eval["precision"][0, :, :, 0, 2]
    ap50 = [float(np.mean(prec[:, c][prec[:, c] > -1])) if (prec[:, c] > -1).any() else None for c in range(k)]
    return [float(v) for v in ev.stats], ap50


faces, _ = evaluate(True)
classes, per_class = evaluate(False)
print(json.dumps({"faces": faces, "classes": classes, "per_class_ap50": per_class}))
