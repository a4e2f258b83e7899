"""Reference for the SSD's training targets and loss (crates/maskflow-models/src/ssd_train.rs), in
PyTorch after ssd.pytorch's `match` / `encode` / `MultiBoxLoss`, with the face-mask SSD's two sigmoid
classes (binary cross-entropy on both logits) in place of a softmax with a background class.

usage: reference_ssd_loss.py OUT_DIR   (writes OUT_DIR/ssd_loss.json)

Random anchors (centre-size, as fractions), 4 photos with 0-5 faces each (one photo without faces,
one face far from every anchor so only the forced best-anchor match takes it), random predictions;
writes the inputs, each photo's positive anchors and encoded offsets, and the two losses.
"""
import json
import os
import sys

import torch

torch.manual_seed(25)
A, N, NEG_POS, IOU = 400, 4, 3.0, 0.5
VAR = (0.1, 0.2)

c = torch.rand(A, 2, dtype=torch.float64)
s = torch.rand(A, 2, dtype=torch.float64) * 0.3 + 0.03
anchors = torch.cat([c - s / 2, c + s / 2], 1)


def jaccard(a, b):
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def encode(matched, priors):
    pc = (priors[:, :2] + priors[:, 2:]) / 2
    pwh = priors[:, 2:] - priors[:, :2]
    g_c = ((matched[:, :2] + matched[:, 2:]) / 2 - pc) / (VAR[0] * pwh)
    g_wh = torch.log((matched[:, 2:] - matched[:, :2]).clamp(min=1e-6) / pwh) / VAR[1]
    return torch.cat([g_c, g_wh], 1)


photos, loc_t, cls_t, pos = [], [], [], []
for i in range(N):
    k = [3, 0, 5, 2][i]
    fc = torch.rand(k, 2, dtype=torch.float64) * 0.8 + 0.1
    fs = torch.rand(k, 2, dtype=torch.float64) * 0.25 + 0.02
    boxes = torch.cat([fc - fs / 2, fc + fs / 2], 1)
    if i == 3:
        boxes[1] = torch.tensor([0.001, 0.001, 0.004, 0.003], dtype=torch.float64)
    classes = torch.randint(0, 2, (k,))
    photos.append({"faces": [{"bbox": b.tolist(), "class": int(c)} for b, c in zip(boxes, classes)]})
    lt = torch.zeros(A, 4, dtype=torch.float64)
    ct = torch.zeros(A, 2)
    p = torch.zeros(A, dtype=torch.bool)
    if k:
        ov = jaccard(anchors, boxes)  # A x k
        best_truth_ov, best_truth = ov.max(1)
        best_prior = ov.argmax(0)
        p = best_truth_ov >= IOU
        for j in range(k):
            best_truth[best_prior[j]] = j
            p[best_prior[j]] = True
        lt = torch.where(p[:, None], encode(boxes[best_truth], anchors), lt)
        ct[p, classes[best_truth[p]]] = 1.0
    loc_t.append(lt.float())
    cls_t.append(ct)
    pos.append(p)
loc_t, cls_t, pos = torch.stack(loc_t), torch.stack(cls_t), torch.stack(pos)

loc = torch.randn(N, A, 4)
logits = torch.randn(N, A, 2) * 2
n_pos = pos.sum().float().clamp(min=1)
box_loss = (torch.nn.functional.smooth_l1_loss(loc, loc_t, reduction="none").sum(-1) * pos).sum() / n_pos
bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, cls_t, reduction="none").sum(-1)
ranked = bce.detach().masked_fill(pos, -1.0)
_, order = ranked.sort(dim=1, descending=True, stable=True)
_, rank = order.sort(dim=1, stable=True)
per = pos.long().sum(1, keepdim=True)
k = torch.minimum((per.double() * NEG_POS).floor().long(), A - per)
neg = (rank < k) & ~pos
cls_loss = (bce * (pos | neg).float()).sum() / n_pos

json.dump({
    "anchors": anchors.tolist(), "photos": photos, "neg_pos": NEG_POS, "iou": IOU,
    "loc": loc.flatten().tolist(), "logits": logits.flatten().tolist(),
    "positive": pos.tolist(), "loc_t": loc_t.flatten().tolist(), "cls_t": cls_t.flatten().tolist(),
    "box_loss": float(box_loss), "cls_loss": float(cls_loss), "negatives": int(neg.sum()),
}, open(os.path.join(sys.argv[1], "ssd_loss.json"), "w"))
print("positives", int(pos.sum()), "negatives", int(neg.sum()), "box", float(box_loss), "cls", float(cls_loss))
