#!/usr/bin/env bash
# Index + prep of a real dataset three ways on this machine, one after the other, each from an empty
# local store: (1) `maskflow run` as usual, (2) the same through plan → task → commit with the local
# executor, (3) with the Ray executor on a local cluster of two worker nodes (1 CPU each; the
# cluster's start is not timed). Stores are file:// folders (the protocol's overhead, not a network's).
# Then checks the three index and prep artifacts are byte-identical and projects the scaling from
# the per-task times of the Ray run.
#   bench/fanout_bench.sh PIPELINE [TASK_ITEMS]
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE="${1:-pipelines/facemask.toml}"
ITEMS="${2:-500}"
mf=./target/release/maskflow
work=$(mktemp -d)
trap 'rm -rf "$work"; [[ -n ${cluster:-} ]] && kill $cluster 2>/dev/null || true' EXIT
t() { local name=$1; shift; /usr/bin/time -f "$name wall %e s, peak RSS %M KB" "$@" > "$work/$name.log" 2> >(tee "$work/$name.time" >&2); }
wall() { sed -n 's/.* wall \([0-9.]*\) s.*/\1/p' "$work/$1.time"; }

t plain $mf run "$PIPELINE" --until prep --device cpu --artifacts "$work/plain"
t local $mf run "$PIPELINE" --until prep --device cpu --artifacts "$work/local" --store "file://$work/store-local" \
  --executor local --task-items "$ITEMS"

fifo="$work/cluster.fifo"; mkfifo "$fifo"
.venv/bin/python scripts/ray-cluster.py --nodes 2 --cpus-per-node 1 --max-seconds 3600 > "$fifo" &
cluster=$!
read -r address < "$fifo"
echo "ray cluster at $address" >&2
t ray $mf run "$PIPELINE" --until prep --device cpu --artifacts "$work/ray" --store "file://$work/store-ray" \
  --executor ray --ray-address "$address" --ray-python .venv/bin/python --task-items "$ITEMS"
kill $cluster 2>/dev/null || true

.venv/bin/python - "$work" "$(wall plain)" "$(wall local)" "$(wall ray)" <<'PY'
import json, os, re, sys
work, plain, local, ray = sys.argv[1], *map(float, sys.argv[2:])
def artifacts(store):
    out = {}
    for kind in ("index", "prep"):
        d = os.path.join(store, kind)
        keys = [k for k in os.listdir(d) if not k.startswith(".")]
        assert len(keys) == 1, (store, kind, keys)
        m = json.load(open(os.path.join(d, keys[0], "manifest.json")))
        out[kind] = (keys[0], [(f["path"], f["bytes"], f["blake3"]) for f in m["files"]])
    return out
a = {w: artifacts(os.path.join(work, w)) for w in ("plain", "local", "ray")}
for kind in ("index", "prep"):
    same = a["plain"][kind] == a["local"][kind] == a["ray"][kind]
    print(f"{kind}: key {a['plain'][kind][0][:12]}, {len(a['plain'][kind][1])} files: "
          f"{'byte-identical (same key, same files and blake3) in all three' if same else 'DIFFERENT'}")
    if not same:
        sys.exit(1)
print(f"wall: plain {plain:.1f} s, local executor {local:.1f} s ({local / plain:.2f}x), "
      f"ray 2 nodes {ray:.1f} s ({ray / plain:.2f}x)")
tasks = {}
for line in open(os.path.join(work, "ray.log")):
    m = re.match(r"ray: (\w+) task (\d+) of \w+: done in ([0-9.]+)s \[node (\w+), ([0-9.]+)s\]", line)
    if m:
        tasks.setdefault(m.group(1), []).append((float(m.group(3)), float(m.group(5))))
for kind, ts in tasks.items():
    inside = sum(t for t, _ in ts); outside = sum(t for _, t in ts)
    print(f"{kind}: {len(ts)} tasks; work inside maskflow task {inside:.1f} s, per task incl. process start "
          f"{outside:.1f} s (overhead per task {(outside - inside) / len(ts):.2f} s)")
    for w in (2, 8, 32, 128):
        print(f"  projection with {w:>3} one-CPU workers: ~{outside / w + max(x for _, x in ts):.1f} s for the tasks")
PY
