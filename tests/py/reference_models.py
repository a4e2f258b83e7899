"""Reference outputs from torchvision for maskflow-models' golden tests.

usage: reference_models.py OUT_DIR [MOBILENET_WEIGHTS]

Writes into OUT_DIR:
  mobilenet_v2.safetensors   inputs (2,3,224,224) + torchvision logits with the real ImageNet weights
                             (only when MOBILENET_WEIGHTS is given)
  <arch>-legacy.pth, <arch>-zip.pth, <arch>.safetensors
                             for resnet18/34/50: a random torchvision-format state dict in both
                             torch.save formats, and inputs (2,3,64,64) + the logits it gives
  bad-global.pth             a checkpoint whose pickle references os.system (must be refused)
"""
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file

torch.set_num_threads(2)
out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x).contiguous()


if len(sys.argv) > 2:
    sd = torch.load(sys.argv[2], map_location="cpu", weights_only=True)
    m = torchvision.models.mobilenet_v2()
    m.load_state_dict(sd)
    g = torch.Generator().manual_seed(0)
    # ImageNet-normalised scale inputs: uniform pixels in 0..1, normalised as training does.
    x = torch.rand(2, 3, 224, 224, generator=g)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = ((x - mean) / std).contiguous()
    save_file({"input": x, "logits": logits(m, x)}, os.path.join(out, "mobilenet_v2.safetensors"))

for i, arch in enumerate(["resnet18", "resnet34", "resnet50"]):
    torch.manual_seed(100 + i)
    m = getattr(torchvision.models, arch)()
    # Random BatchNorm statistics and affine parameters, so loading them wrongly shows in the logits.
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.0)
                mod.bias.uniform_(-0.1, 0.1)
                mod.num_batches_tracked.fill_(7)
    sd = m.state_dict()
    torch.save(sd, os.path.join(out, f"{arch}-legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(sd, os.path.join(out, f"{arch}-zip.pth"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    save_file({"input": x, "logits": logits(m, x)}, os.path.join(out, f"{arch}.safetensors"))

torch.save({"weight": torch.zeros(2), "hook": os.system}, os.path.join(out, "bad-global.pth"))
print("ok")
