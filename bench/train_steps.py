"""PyTorch eager peer of `maskflow-train`'s bench_steps: MobileNetV2 body + fastai head, 224², batch 64.

Prints one JSON line: images/s for inference (fp32, and bf16 autocast), a frozen step (body frozen except BatchNorm, train mode)
and a full fine-tuning step. Run it with the tuned allocator (bench/train_bench.sh sets
GLIBC_TUNABLES) and the same thread count as maskflow.
"""
import json
import sys
import time

import torch
import torchvision
from torch import nn

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
iters = int(sys.argv[2]) if len(sys.argv) > 2 else 6
torch.set_num_threads(threads)
torch.manual_seed(0)


class ConcatPool(nn.Module):
    def forward(self, x):
        return torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)


body = torchvision.models.mobilenet_v2().features
head = nn.Sequential(
    ConcatPool(), nn.Flatten(), nn.BatchNorm1d(2560), nn.Dropout(0.25), nn.Linear(2560, 512), nn.ReLU(),
    nn.BatchNorm1d(512), nn.Dropout(0.5), nn.Linear(512, 2),
)
model = nn.Sequential(body, head).to(memory_format=torch.channels_last)
x = torch.randn(64, 3, 224, 224).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 2, (64,))


def timed(fn):
    for _ in range(2):
        fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return 64 * iters / (time.perf_counter() - t)


def set_frozen(frozen):
    for m in body.modules():
        is_bn = isinstance(m, nn.BatchNorm2d)
        for p in m.parameters(recurse=False):
            p.requires_grad = (not frozen) or is_bn


def make_step():
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.99), weight_decay=0.01)

    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


model.eval()
with torch.no_grad():
    inference = timed(lambda: model(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inference_bf16 = timed(lambda: model(x))
model.train()
set_frozen(True)
frozen = timed(make_step())
set_frozen(False)
full = timed(make_step())
print(json.dumps({"inference": inference, "inference_bf16": inference_bf16, "frozen_step": frozen, "full_step": full,
                  "threads": threads}))
