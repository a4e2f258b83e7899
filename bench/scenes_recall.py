"""Face finding on annotated whole photos: recall, precision and the detector's own mask labels,
from `maskflow detect --jsonl` records and Pascal VOC annotations (../shared/datasets/face-mask-scenes).

usage: scenes_recall.py ANNOTATIONS_DIR DETECTIONS.jsonl [DETECTIONS.jsonl ...]

For each detections file (one per detector): every annotated face is matched greedily, highest
detector score first, to the unmatched detection of largest IoU ≥ 0.5 in its photo. Printed per
detector: recall of the faces whose box is at least 32 px on its shorter side (and of all faces),
precision over all detections, and — where the detector gives its own mask scores (the SSD) — how
many matched faces it labels right (with_mask vs without; incorrectly worn counted as with_mask,
balanced over the two classes). The photos measured are those in the detections files.
"""
import json
import os
import sys
import xml.etree.ElementTree as ET

ann_dir = sys.argv[1]
WITH = {"con_mascarilla": 0, "mascarilla_mal_puesta": 0, "sin_mascarilla": 1}
# The label (`label`: the classifier's, or the SSD's own with --labels detector) on with/without
# faces; masks worn incorrectly are left out of it.
LABEL = {"con_mascarilla": "with_mask", "sin_mascarilla": "without_mask"}


def truth(stem):
    root = ET.parse(os.path.join(ann_dir, stem + ".xml")).getroot()
    out = []
    for o in root.iter("object"):
        b = o.find("bndbox")
        box = [float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
        out.append((box, WITH[o.find("name").text], o.find("name").text))
    return out


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


for path in sys.argv[2:]:
    found_big = total_big = found_all = total_all = dets = tp = photos = 0
    right = [0, 0]
    seen = [0, 0]
    label_right = {"with_mask": 0, "without_mask": 0}
    label_seen = {"with_mask": 0, "without_mask": 0}
    for line in open(path):
        r = json.loads(line)
        if "faces" not in r:
            continue
        photos += 1
        stem = os.path.splitext(os.path.basename(r["path"]))[0]
        gt = truth(stem)
        faces = sorted(r["faces"], key=lambda f: -f["score"])
        dets += len(faces)
        matched = {}
        # Greedy over detections, highest score first, each taking the best unmatched face.
        for di, f in enumerate(faces):
            best, bj = 0.5, None
            for gj, (g, _, _) in enumerate(gt):
                if gj in matched:
                    continue
                v = iou(f["box"], g)
                if v >= best:
                    best, bj = v, gj
            if bj is not None:
                matched[bj] = di
        tp += len(matched)
        for gj, (g, cls, name) in enumerate(gt):
            big = min(g[2] - g[0], g[3] - g[1]) >= 32
            total_all += 1
            total_big += big
            if gj in matched:
                found_all += 1
                found_big += big
                f = faces[matched[gj]]
                if "label" in f and name in LABEL:
                    label_seen[LABEL[name]] += 1
                    label_right[LABEL[name]] += int(f["label"] == LABEL[name])
                ms = f.get("detector_mask_scores", f.get("mask_scores"))
                if ms is not None:
                    seen[cls] += 1
                    right[cls] += int((ms[1] > ms[0]) == (cls == 1))
    name = os.path.basename(os.path.dirname(path)) or path
    line = {
        "detector": name,
        "photos": photos,
        "faces >= 32 px": total_big,
        "recall >= 32 px": round(found_big / max(total_big, 1), 4),
        "recall all": round(found_all / max(total_all, 1), 4),
        "precision": round(tp / max(dets, 1), 4),
        "detections": dets,
    }
    if sum(label_seen.values()):
        line["label, balanced accuracy (with/without)"] = round(sum(label_right[c] / max(label_seen[c], 1) for c in label_seen) / 2, 4)
    if sum(seen):
        line["own mask label, balanced accuracy"] = round(sum(right[c] / max(seen[c], 1) for c in (0, 1)) / 2, 4)
    print(json.dumps(line))
