"""Reads maskflow prep shards with pyarrow (as any Python consumer would) and dumps them for the
Rust interop test: pixels in table order to OUT/pixels.bin, one JSON object per row to OUT/rows.jsonl.
Also checks the schema and that every pixel buffer reshapes to (height, width, channels)."""
import json
import pathlib
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

shards, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
files = sorted(shards.glob("*.parquet"))
assert files, f"no shards in {shards}"
with open(out / "pixels.bin", "wb") as px, open(out / "rows.jsonl", "w") as rows:
    for f in files:
        t = pq.read_table(f)
        pix_type = t.schema.field("pixels").type
        assert pa.types.is_fixed_size_binary(pix_type), pix_type
        for r in t.to_pylist():
            h, w, c = r["height"], r["width"], r["channels"]
            assert pix_type.byte_width == h * w * c
            arr = np.frombuffer(r["pixels"], dtype=np.uint8).reshape(h, w, c)
            px.write(arr.tobytes())
            rows.write(json.dumps({k: r[k] for k in ("path", "label", "label_idx", "split", "content_hash")}) + "\n")
print(f"read {len(files)} shards")
