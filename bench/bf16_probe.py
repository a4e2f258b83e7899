"""bf16 probe (PyTorch side only): does bf16 autocast pay on this CPU (AVX-512-BF16, no AMX)?

MobileNetV2 + fastai head, 224², batch 64, channels-last, 2 threads, fp32 vs torch.autocast("cpu",
bfloat16): images/s of inference and of a full fine-tuning step, 2 rounds alternating. Run with the
tuned allocator: GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
.venv/bin/python bench/bf16_probe.py
"""
import json, sys, time, torch, torchvision
from torch import nn
torch.set_num_threads(2); torch.manual_seed(0)
class ConcatPool(nn.Module):
    def forward(self, x):
        return torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)
body = torchvision.models.mobilenet_v2().features
head = nn.Sequential(ConcatPool(), nn.Flatten(), nn.BatchNorm1d(2560), nn.Dropout(0.25), nn.Linear(2560, 512), nn.ReLU(), nn.BatchNorm1d(512), nn.Dropout(0.5), nn.Linear(512, 2))
model = nn.Sequential(body, head).to(memory_format=torch.channels_last)
x = torch.randn(64, 3, 224, 224).to(memory_format=torch.channels_last); y = torch.randint(0, 2, (64,))
opt = torch.optim.AdamW(model.parameters(), 1e-4)
def step(bf16):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
def infer(bf16):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model.eval(); model(x); model.train()
def rate(f, bf16, it):
    for _ in range(2): f(bf16)
    t = time.perf_counter()
    for _ in range(it): f(bf16)
    return 64 * it / (time.perf_counter() - t)
for r in range(2):
    for bf16 in (False, True):
        print(json.dumps({"round": r, "bf16": bf16, "infer": round(rate(infer, bf16, 4), 1), "full_step": round(rate(step, bf16, 3), 1)}), flush=True)
