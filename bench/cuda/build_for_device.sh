#!/usr/bin/env bash
# Builds a maskflow binary for a GPU machine whose PyTorch differs from the project's torch 2.13
# (the device tool's machines have torch 2.11.0+cu130 in /opt/torch/.venv). The binary must be
# compiled against the headers of the libtorch it will load: linked against 2.13 and run on 2.11
# libraries, it loads (every symbol resolves) but computes garbage (`maskflow info`'s self-check
# printed sum([1, 2, 3]) = 0). tch 0.26's generated wrapper calls 15 ops that 2.11 lacks; they are
# stubbed to throw (maskflow uses none of them).
#
# usage: bench/cuda/build_for_device.sh [TORCH_VERSION]   → .devcheck/ (git-ignored), ready to carry:
#   .devcheck/maskflow (stripped), .devcheck/lib/libjpeg.so.62, pipelines and the check script.
set -euo pipefail
cd "$(dirname "$0")/../.."
ver=${1:-2.11.0}
work=/tmp/maskflow-torch-$ver
mkdir -p "$work"
if [[ ! -d $work/torch/include ]]; then
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: "torch==$ver" -d "$work"
  (cd "$work" && unzip -q -o torch-"$ver"-*.whl 'torch/lib/*' 'torch/include/*' 'torch/share/*')
fi
rm -rf "$work/src" "$work/torch-sys" && mkdir -p "$work/src"
git ls-files -z | xargs -0 tar -c | tar -x -C "$work/src"
cp -r "$(ls -d ~/.cargo/registry/src/*/torch-sys-0.26.0 | head -1)" "$work/torch-sys"
sed -i '/^\[env\]/,$d' "$work/src/.cargo/config.toml"   # LIBTORCH_USE_PYTORCH would win over LIBTORCH
printf '\n[patch.crates-io]\ntorch-sys = { path = "%s/torch-sys" }\n' "$work" >> "$work/src/Cargo.toml"
build() {
  (cd "$work/src" && env -u LIBTORCH_USE_PYTORCH LIBTORCH="$work/torch" LIBTORCH_BYPASS_VERSION_CHECK=1 \
    CARGO_TARGET_DIR="$work/target" cargo build --release --bin maskflow) >"$work/build.log" 2>&1
}
if ! build; then
  # Stub every generated wrapper the older headers reject, then build again.
  python3 - "$work" <<'PY'
import re, sys
work = sys.argv[1]
p = f"{work}/torch-sys/libtch/torch_api_generated.cpp"
lines = open(p).read().split("\n")
bad = sorted({int(n) for n in re.findall(r"torch_api_generated.cpp:(\d+):\d+: error", open(f"{work}/build.log").read())})
for ln in bad:
    a = b = ln - 1
    while not lines[a].startswith("  PROTECT("):
        a -= 1
    while lines[b] != "  )":
        b += 1
    lines[a:b + 1] = ['  PROTECT(throw std::runtime_error("not in this libtorch");)'] + [""] * (b - a)
open(p, "w").write("\n".join(lines))
print(f"stubbed {len(bad)} generated wrappers")
PY
  build || { tail -30 "$work/build.log"; exit 1; }
fi
mkdir -p .devcheck/lib
strip -o .devcheck/maskflow "$work/target/release/maskflow"
cp -L /usr/lib/x86_64-linux-gnu/libjpeg.so.62 .devcheck/lib/
cp bench/cuda/check.sh bench/cuda/gpu.toml bench/cuda/gpu-fixed.toml .devcheck/
sed -i 's|root = "../../data/synth-gpu"|root = "../data/synth-gpu"|' .devcheck/gpu.toml .devcheck/gpu-fixed.toml
target/release/maskflow weights import mobilenet_v2 >/dev/null
echo "ready: device run 'bash .devcheck/check.sh', carry [.devcheck, artifacts/weights]"
