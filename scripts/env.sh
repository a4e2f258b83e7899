# Source this (`. scripts/env.sh`) to use cargo directly: the project venv first on PATH, so
# torch-sys (LIBTORCH_USE_PYTORCH=1) finds libtorch in the venv's torch wheel.
_mf_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export VIRTUAL_ENV="$_mf_root/.venv"
export PATH="$_mf_root/.venv/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
unset _mf_root
