# Source this (`. scripts/env.sh`) to use cargo directly: the project venv first on PATH, so
# its python and `just` are found (torch-sys finds libtorch through .cargo/config.toml).
_mf_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export VIRTUAL_ENV="$_mf_root/.venv"
export PATH="$_mf_root/.venv/bin:$PATH"
unset _mf_root
