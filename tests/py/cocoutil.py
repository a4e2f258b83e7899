"""pycocotools' COCOeval on faces and detections shaped as maskflow's metrics take them
(crates/maskflow-annotations/src/metrics.rs): shared by reference_coco.py and cocoeval_scored.py."""
import contextlib
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def xywh(b):
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def cocoeval(truth, dets, photos, classes):
    """COCOeval (bbox, maxDets 100) evaluated, accumulated and summarized. `truth`: dicts with
    `photo`, `class`, `bbox` [x1, y1, x2, y2], `crowd`; `dets`: `photo`, `class`, `bbox`, `score`;
    photo and class indices from 0 (ids from 1 in COCO). The area of a face is its box's."""
    gt = {
        "info": {}, "licenses": [],
        "images": [{"id": p + 1} for p in range(photos)],
        "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(classes)],
        "annotations": [
            {"id": i + 1, "image_id": t["photo"] + 1, "category_id": t["class"] + 1, "bbox": xywh(t["bbox"]),
             "area": (t["bbox"][2] - t["bbox"][0]) * (t["bbox"][3] - t["bbox"][1]), "iscrowd": int(t["crowd"])}
            for i, t in enumerate(truth)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        res = [{"image_id": d["photo"] + 1, "category_id": d["class"] + 1, "score": d["score"], "bbox": xywh(d["bbox"])}
               for d in dets]
        # loadRes refuses an empty list: no detections is an empty result set.
        ev = COCOeval(coco, coco.loadRes(res) if res else COCO(), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev
