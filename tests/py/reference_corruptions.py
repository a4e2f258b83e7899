"""References for maskflow's corruptions (crates/maskflow-data/src/corrupt.rs), made with torch,
torchvision and PIL in the project venv.

usage: reference_corruptions.py OUT_DIR

Writes OUT_DIR/corruptions.safetensors: `input` (3, 224, 224) float in [0, 1] — a smooth synthetic
face-like picture with edges, so that JPEG behaves as on photos — and one reference per case:
downscale_S (area down to S px, bilinear back up, align_corners=False), blur_SIGMA (torchvision's
gaussian_blur, kernel 2⌈3σ⌉+1, reflect padding), brightness_F, contrast_C (per-channel mean),
jpeg_Q (PIL/libjpeg round trip: a different encoder from maskflow's, so compared within a tolerance).
"""
import io
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from safetensors.torch import save_file

out = sys.argv[1]
h = w = 224
yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
face = ((xx / 0.6) ** 2 + (yy / 0.8) ** 2 < 1).float()
mask = (face * (yy > 0.15).float())
r = 0.35 + 0.5 * face - 0.25 * mask + 0.1 * xx
g = 0.30 + 0.4 * face + 0.3 * mask + 0.1 * yy
b = 0.40 + 0.3 * face + 0.4 * mask - 0.1 * xx * yy
x = torch.stack([r, g, b]).clamp(0, 1)
x = (x * 255).round() / 255  # exactly representable in 8 bits

refs = {"input": x.contiguous()}
for side in [64, 32, 16]:
    s = round(side * h / 224)
    small = F.interpolate(x[None], size=(s, s), mode="area")
    refs[f"downscale_{side}"] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0].clamp(0, 1)
for sigma in [1.0, 2.0, 4.0]:
    k = 2 * int(np.ceil(3 * sigma)) + 1
    refs[f"blur_{sigma}"] = TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma]).clamp(0, 1)
for f in [0.7, 0.2]:
    refs[f"brightness_{f}"] = (x * f).clamp(0, 1)
for c in [0.5, 0.1]:
    m = x.mean(dim=(1, 2), keepdim=True)
    refs[f"contrast_{c}"] = ((x - m) * c + m).clamp(0, 1)
for q in [30, 7]:
    img = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=q)
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).astype(np.float32) / 255
    refs[f"jpeg_{q}"] = torch.from_numpy(back).permute(2, 0, 1).contiguous()
save_file({k: v.contiguous().float() for k, v in refs.items()}, f"{out}/corruptions.safetensors")
