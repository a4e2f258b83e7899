"""pycocotools' COCOeval (bbox, maxDets 100) on a deteval artifact's `detections.json` — the faces
and detections exactly as maskflow scored them — for faces as one class (`faces`, every detection)
and per class (`truth`: a face of a class the labeller lacks is a crowd face in each class).

usage: cocoeval_scored.py DETECTIONS_JSON   (prints JSON: {"faces": stats, "classes": stats, "per_class_ap50": [...]})
`stats` are summarize()'s 12 numbers (-1 where nothing counts).
"""
import contextlib
import io
import json
import sys

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

s = json.load(open(sys.argv[1]))


def evaluate(one_class):
    k = 1 if one_class else len(s["classes"])
    truth = s["faces"] if one_class else s["truth"]
    cls = (lambda c: 1) if one_class else (lambda c: c + 1)  # noqa: E731
    xywh = lambda b: [b[0], b[1], b[2] - b[0], b[3] - b[1]]  # noqa: E731
    gt = {
        "info": {}, "licenses": [],
        "images": [{"id": i + 1} for i in range(len(s["images"]))],
        "categories": [{"id": c + 1, "name": str(c)} for c in range(k)],
        "annotations": [
            {"id": i + 1, "image_id": t["photo"] + 1, "category_id": cls(t["class"]), "bbox": xywh(t["bbox"]),
             "area": (t["bbox"][2] - t["bbox"][0]) * (t["bbox"][3] - t["bbox"][1]), "iscrowd": int(t["crowd"])}
            for i, t in enumerate(truth)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        dets = [{"image_id": d["photo"] + 1, "category_id": cls(d["class"]), "score": d["score"], "bbox": xywh(d["bbox"])}
                for d in s["detections"]]
        ev = COCOeval(coco, coco.loadRes(dets) if dets else COCO(), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"][0, :, :, 0, 2]
    ap50 = [float(np.mean(prec[:, c][prec[:, c] > -1])) if (prec[:, c] > -1).any() else None for c in range(k)]
    return [float(v) for v in ev.stats], ap50


faces, _ = evaluate(True)
classes, per_class = evaluate(False)
print(json.dumps({"faces": faces, "classes": classes, "per_class_ap50": per_class}))
