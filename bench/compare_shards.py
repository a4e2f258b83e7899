"""Compares two prep outputs of the same index row by row: mean absolute difference and PSNR of
the pixels (e.g. JPEG draft decoding vs full decoding, same resize)."""
import pathlib
import sys

import numpy as np
import pyarrow.parquet as pq


def load(d):
    out = {}
    for f in sorted(pathlib.Path(d).glob("*.parquet")):
        t = pq.read_table(f, columns=["path", "pixels"]).to_pydict()
        for p, px in zip(t["path"], t["pixels"]):
            out[p] = np.frombuffer(px, np.uint8).astype(np.int16)
    return out


a, b = load(sys.argv[1]), load(sys.argv[2])
assert a.keys() == b.keys(), "different rows"
diffs = np.array([np.abs(a[k] - b[k]).mean() for k in a])
mse = np.array([((a[k] - b[k]).astype(np.float64) ** 2).mean() for k in a])
same = int((mse == 0).sum())
psnr = 10 * np.log10(255**2 / max(mse.mean(), 1e-12))
worst = 10 * np.log10(255**2 / max(mse.max(), 1e-12))
label = sys.argv[3] if len(sys.argv) > 3 else f"{sys.argv[1]} vs {sys.argv[2]}"
print(f"{label}: {len(a)} images, {same} identical, mean |diff| {diffs.mean():.3f} levels, "
      f"PSNR {psnr:.1f} dB overall, worst image {worst:.1f} dB")
