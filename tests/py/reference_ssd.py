"""References for maskflow's face-mask SSD (crates/maskflow-models/src/ssd.rs): AIZOOTech
FaceMaskDetection's own PyTorch model, anchors, decoding and NMS (vendored in
third_party/aizoo-face-mask-detection, MIT) run in the project venv.

usage: reference_ssd.py OUT_DIR MODEL360_PTH MODEL260_PTH

Its `pytorch_infer.inference` resizes with OpenCV, which the venv does not have; this script does
the same steps with the resize left to torch (bilinear, half-pixel centres, as maskflow does) or,
for photos already at the input size, with no resize at all, so the comparison is of the network,
anchors, decoding and NMS. The photos (public-domain, from scikit-image's data folder):
  astronaut   skimage's astronaut at 360×360 and at 260×260 (no resize on either side)
  masked      the same photo with a blue "mask" drawn over nose, mouth and chin
  crowd       a 1000×700 composite: the masked and the bare face at several sizes, on a textured
              background (resized to the input by both sides)
  coffee      skimage's coffee cup (400×600, no face)
Writes OUT_DIR/<photo>.png and OUT_DIR/detections.json: per input size ("ssd360", "ssd260") and
photo, the kept boxes in pixels (clipped to the photo, before the repository's int truncation),
their scores (the larger class score) and both class scores, highest score first; and the raw
network outputs on the first photo, for a direct check.
"""
import importlib.util
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

out, pth360, pth260 = sys.argv[1], sys.argv[2], sys.argv[3]
repo = os.path.dirname(os.path.dirname(os.path.abspath(pth360)))
# MainModel.KitModel, which the .pth files name: load_model/'s copy (models/MainModel.py has the
# padding before the third pool commented out: the same at 360, a 32² instead of 33² first feature
# map at 260, which no longer matches the anchors)
sys.path.insert(0, os.path.join(repo, "load_model"))
sys.path.insert(0, repo)
from utils.anchor_generator import generate_anchors  # noqa: E402
from utils.anchor_decode import decode_bbox  # noqa: E402
from utils.nms import single_class_non_max_suppression  # noqa: E402

torch.set_num_threads(1)
data = os.path.join(importlib.util.find_spec("skimage").submodule_search_locations[0], "data")
astronaut = Image.open(os.path.join(data, "astronaut.png")).convert("RGB")


def masked(img, box):
    """Draws a mask-like blue polygon over the lower half of the face in `box` (x1, y1, x2, y2)."""
    img = img.copy()
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    d = ImageDraw.Draw(img)
    d.polygon([(x1 + 0.12 * w, y1 + 0.52 * h), (x2 - 0.12 * w, y1 + 0.52 * h), (x2 - 0.18 * w, y1 + 0.92 * h),
               (x1 + 0.5 * w, y2), (x1 + 0.18 * w, y1 + 0.92 * h)], fill=(70, 130, 200))
    return img


masked_astronaut = masked(astronaut, (165, 45, 290, 200))
face = astronaut.crop((140, 20, 310, 215))
masked_face = masked_astronaut.crop((140, 20, 310, 215))
rng = np.random.default_rng(1)
yy, xx = np.mgrid[0:700, 0:1000]
bg = np.stack([120 + 40 * np.sin(xx / 37.0), 130 + 30 * np.cos(yy / 23.0), 110 + 20 * np.sin((xx + yy) / 51.0)], -1)
crowd = Image.fromarray(np.clip(bg + rng.normal(0, 6, bg.shape), 0, 255).astype(np.uint8))
for src, scale, (x, y) in [(masked_face, 1.3, (30, 60)), (face, 1.0, (330, 80)), (masked_face, 0.7, (560, 90)),
                           (face, 0.5, (800, 100)), (masked_face, 0.45, (650, 450)), (face, 0.8, (200, 400))]:
    crowd.paste(src.resize((round(src.width * scale), round(src.height * scale)), Image.BILINEAR), (x, y))
coffee = Image.open(os.path.join(data, "coffee.png")).convert("RGB")

CONFIG = {
    "ssd360": (pth360, 360, [[45, 45], [23, 23], [12, 12], [6, 6], [4, 4]]),
    "ssd260": (pth260, 260, [[33, 33], [17, 17], [9, 9], [5, 5], [3, 3]]),
}
anchor_sizes = [[0.04, 0.056], [0.08, 0.11], [0.16, 0.22], [0.32, 0.45], [0.64, 0.72]]
anchor_ratios = [[1, 0.62, 0.42]] * 5

result = {}
for name, (pth, side, fmaps) in CONFIG.items():
    model = torch.load(pth, map_location="cpu", weights_only=False)
    model.eval()
    anchors_exp = np.expand_dims(generate_anchors(fmaps, anchor_sizes, anchor_ratios), axis=0)
    photos = {
        "astronaut": astronaut.resize((side, side), Image.BILINEAR),
        "masked": masked_astronaut.resize((side, side), Image.BILINEAR),
        "crowd": crowd,
        "coffee": coffee,
    }
    per = {}
    for pname, img in photos.items():
        fname = f"{pname}-{side}.png" if pname in ("astronaut", "masked") else f"{pname}.png"
        img.save(os.path.join(out, fname))
        arr = np.asarray(img)
        height, width, _ = arr.shape
        if (height, width) == (side, side):
            x = torch.tensor(np.expand_dims(arr / 255.0, 0).transpose((0, 3, 1, 2))).float()
        else:
            x = torch.tensor(arr).permute(2, 0, 1)[None].float()
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False) / 255.0
        with torch.no_grad():
            y_bboxes_output, y_cls_output = model.forward(x)
        y_bboxes = decode_bbox(anchors_exp, y_bboxes_output.numpy())[0]
        y_cls = y_cls_output.numpy()[0]
        bbox_max_scores = np.max(y_cls, axis=1)
        keep = single_class_non_max_suppression(y_bboxes, bbox_max_scores, conf_thresh=0.5, iou_thresh=0.4)
        faces = []
        for idx in keep:
            b = y_bboxes[idx]
            faces.append({
                "box": [max(0.0, b[0] * width), max(0.0, b[1] * height), min(b[2] * width, width), min(b[3] * height, height)],
                "score": float(bbox_max_scores[idx]),
                "mask_scores": [float(v) for v in y_cls[idx]],
            })
        per[fname] = faces
        if pname == "astronaut":
            per["raw"] = {"file": fname, "loc": y_bboxes_output.numpy()[0].ravel().tolist(),
                          "cls": y_cls.ravel().tolist()}
    result[name] = per
with open(os.path.join(out, "detections.json"), "w") as f:
    json.dump(result, f)
print(json.dumps({k: {p: len(v) for p, v in per.items() if p != "raw"} for k, per in result.items()}))
