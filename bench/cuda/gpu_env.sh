# Sourced by bench/cuda/precision.sh and ranks2.sh: `gpu_env NAME NEED_GPUS DATASET_ARG` checks that
# NEED_GPUS NVIDIA GPUs are visible (else exits 3 with a message naming NAME), then sets B (the
# binary: $MASKFLOW_BIN, else .devcheck/maskflow from build_for_device.sh, else the release build),
# DATASET (absolute; default ../shared/datasets/face-mask) and OUT (created; default /tmp/maskflow-NAME).
gpu_env() {
  local name=$1 need=$2 arg=${3:-../shared/datasets/face-mask}
  [[ -n $arg ]] || arg=../shared/datasets/face-mask
  local gpus
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
  if (( gpus < need )); then
    echo "bench/cuda/$name.sh: needs $need NVIDIA GPU(s), found ${gpus:-0}; nothing measured" >&2
    exit 3
  fi
  B=${MASKFLOW_BIN:-$PWD/.devcheck/maskflow}
  [[ -x $B ]] || B=$PWD/target/release/maskflow
  DATASET=$(realpath "$arg") || { echo "dataset folder not found: $arg" >&2; exit 2; }
  OUT=${OUT:-/tmp/maskflow-$name}
  mkdir -p "$OUT"
  nvidia-smi -L
}
