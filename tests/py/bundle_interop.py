"""The exported bundle from Python: torch.jit.load(model.pt) on the prep shards' pixels (the same
preprocessed images maskflow predict makes from the files), and the safetensors file through the
`safetensors` package. Writes {path: [probabilities]} as JSON to OUT.

usage: bundle_interop.py BUNDLE_DIR PREP_DIR OUT_JSON
"""
import json
import pathlib
import sys

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

bundle, prep, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
card = json.loads((bundle / "model_card.json").read_text())
module = torch.jit.load(str(bundle / "model.pt"))
weights = load_file(str(bundle / "model.safetensors"))
assert any(k.startswith("head.8.") for k in weights), sorted(weights)[:5]
paths, images = [], []
for f in sorted(prep.glob("*.parquet")):
    for r in pq.read_table(f).to_pylist():
        paths.append(r["path"])
        images.append(np.frombuffer(r["pixels"], dtype=np.uint8).reshape(r["height"], r["width"], r["channels"]))
x = torch.from_numpy(np.stack(images))
assert list(x.shape[1:]) == [card["input"]["height"], card["input"]["width"], 3], x.shape
with torch.no_grad():
    probs = module(x)
assert probs.shape == (len(paths), len(card["classes"])), probs.shape
json.dump({"tensors": len(weights), "probs": dict(zip(paths, probs.tolist()))}, open(out, "w"))
print(f"{len(paths)} images")
