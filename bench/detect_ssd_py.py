"""The Python peer for `maskflow detect --detector ssd`: AIZOOTech FaceMaskDetection's own PyTorch
inference (third_party/aizoo-face-mask-detection: its model, anchors, decoding and NMS; the resize by
torch's bilinear instead of OpenCV, which the venv lacks), photo by photo, as its pytorch_infer.py
runs it. Detection only (no classifier). Prints the photo count, faces and seconds after loading.

usage: THREADS=2 detect_ssd_py.py OUT.jsonl PHOTO...
"""
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "third_party", "aizoo-face-mask-detection")
sys.path.insert(0, os.path.join(repo, "load_model"))
sys.path.insert(0, repo)
from utils.anchor_generator import generate_anchors  # noqa: E402
from utils.anchor_decode import decode_bbox  # noqa: E402
from utils.nms import single_class_non_max_suppression  # noqa: E402

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
out, photos = sys.argv[1], sys.argv[2:]
model = torch.load(os.path.join(repo, "models", "model360.pth"), map_location="cpu", weights_only=False).eval()
anchors = np.expand_dims(generate_anchors([[45, 45], [23, 23], [12, 12], [6, 6], [4, 4]],
                                          [[0.04, 0.056], [0.08, 0.11], [0.16, 0.22], [0.32, 0.45], [0.64, 0.72]],
                                          [[1, 0.62, 0.42]] * 5), axis=0)
t = time.time()
faces = 0
with open(out, "w") as f:
    for p in photos:
        img = np.asarray(Image.open(p).convert("RGB"))
        h, w, _ = img.shape
        x = F.interpolate(torch.tensor(img).permute(2, 0, 1)[None].float(), size=(360, 360), mode="bilinear",
                          align_corners=False) / 255.0
        with torch.no_grad():
            loc, cls = model(x)
        boxes = decode_bbox(anchors, loc.numpy())[0]
        cls = cls.numpy()[0]
        keep = single_class_non_max_suppression(boxes, cls.max(1), conf_thresh=0.5, iou_thresh=0.4)
        found = [{"box": [float(boxes[i][0] * w), float(boxes[i][1] * h), float(boxes[i][2] * w), float(boxes[i][3] * h)],
                  "score": float(cls[i].max()), "mask_scores": [float(v) for v in cls[i]]} for i in keep]
        faces += len(found)
        f.write(json.dumps({"path": p, "faces": found}) + "\n")
print(json.dumps({"photos": len(photos), "faces": faces, "seconds": round(time.time() - t, 2)}))
