"""The peer of maskflow's prep stage in Python: PIL + pyarrow doing the same work.

Per image: read, decode (PIL, libjpeg-turbo), EXIF transpose, to RGB (alpha composited on white, as
maskflow does), one bilinear resample of the centre square to SIZE x SIZE (PIL's resize with a box,
the same single pass as maskflow's `crop`), tobytes; rows written to Parquet shards of 256 rows (small
jobs keep both workers busy to the end), row groups of 64, COMPRESSION (maskflow's default: none), pixels as fixed_size_binary. WORKERS processes, each preparing and writing whole
shards. `--draft` lets PIL decode JPEGs at a reduced DCT scale (Image.draft), as maskflow's
`jpeg_draft` does.

usage: prep_pil.py INDEX_PARQUET DATASET_ROOT OUT_DIR [--workers 2] [--size 224] [--draft] [--compression none]
prints one JSON line: {"images": N, "seconds": S, "images_per_second": R}
"""
import argparse
import json
import os
import time
from multiprocessing import Pool

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

ap = argparse.ArgumentParser()
ap.add_argument("index")
ap.add_argument("root")
ap.add_argument("out")
ap.add_argument("--workers", type=int, default=2)
ap.add_argument("--size", type=int, default=224)
ap.add_argument("--draft", action="store_true")
ap.add_argument("--compression", default="none", choices=["none", "snappy", "lz4", "zstd"])
args = ap.parse_args()
SIZE = args.size


def prepare(path):
    with open(path, "rb") as f:
        im = Image.open(f)
        if args.draft and im.format == "JPEG":
            im.draft("RGB", (SIZE, SIZE))
        im.load()
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    im = im.convert("RGB")
    w, h = im.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return im.resize((SIZE, SIZE), Image.BILINEAR, box=box).tobytes()


def shard(job):
    n, rows = job
    schema = pa.schema([
        ("content_hash", pa.string()), ("label_idx", pa.int32()), ("label", pa.string()),
        ("split", pa.string()), ("height", pa.uint32()), ("width", pa.uint32()),
        ("channels", pa.uint32()), ("pixels", pa.binary(SIZE * SIZE * 3)), ("path", pa.string()),
    ])
    with pq.ParquetWriter(os.path.join(args.out, f"{rows[0]['split']}-{n:05d}.parquet"), schema,
                          compression=args.compression, use_dictionary=["content_hash", "label", "split", "path"],
                          write_statistics=False) as w:
        for g in range(0, len(rows), 64):
            part = rows[g:g + 64]
            pixels = [prepare(os.path.join(os.fsencode(args.root), r["path_raw"])) for r in part]
            w.write_table(pa.table({
                "content_hash": [r["content_hash"] for r in part],
                "label_idx": pa.array([r["label_idx"] for r in part], pa.int32()),
                "label": [r["label"] for r in part],
                "split": [r["split"] for r in part],
                "height": pa.array([SIZE] * len(part), pa.uint32()),
                "width": pa.array([SIZE] * len(part), pa.uint32()),
                "channels": pa.array([3] * len(part), pa.uint32()),
                "pixels": pa.array(pixels, pa.binary(SIZE * SIZE * 3)),
                "path": [r["path"] for r in part],
            }, schema=schema))
    return len(rows)


if __name__ == "__main__":
    rows = [r for r in pq.read_table(args.index).to_pylist() if r["status"] == "ok"]
    jobs = []
    for split in ("train", "valid"):
        sr = [r for r in rows if r["split"] == split]
        jobs += [(i // 256, sr[i:i + 256]) for i in range(0, len(sr), 256)]
    os.makedirs(args.out, exist_ok=True)
    t = time.perf_counter()
    with Pool(args.workers) as pool:
        n = sum(pool.imap_unordered(shard, jobs))
    s = time.perf_counter() - t
    print(json.dumps({"images": n, "seconds": s, "images_per_second": n / s}))
