# maskflow recipes. From a fresh machine, use scripts/just (it bootstraps the venv, then runs this).
set shell := ["bash", "-euo", "pipefail", "-c"]

export VIRTUAL_ENV := justfile_directory() / ".venv"
export PATH := justfile_directory() / ".venv/bin" + ":" + env_var("PATH")

bin := justfile_directory() / "target/release/maskflow"

# Cargo features of the release binary: empty (the default) builds a binary for local runs and
# file:// stores; `MASKFLOW_FEATURES=s3` adds the S3 client for a team's shared bucket. Set it once
# for a checkout (e.g. in the shell's profile): a build with other features rebuilds the top crates.
features := env_var_or_default("MASKFLOW_FEATURES", "")

# List the recipes.
default:
    @just --list

# Create / refresh the project virtualenv with what the binary needs (libtorch from the torch wheel,
# CPU-only unless a GPU is visible; just; the mobilenet_v2 weights). Idempotent.
setup:
    @scripts/bootstrap.sh

# Build the release binary (target/release/maskflow; runs without any environment set), with the
# features in MASKFLOW_FEATURES (`s3` for S3 stores).
build: setup
    @cargo build --release --quiet --bin maskflow --features "{{features}}"

# The demo pipeline end to end on synthetic data (generated on first run). A rerun is all cached.
demo: build
    @{{bin}} run pipelines/demo.toml

# The fast tier, to run while working (≤ 5 min on a warm build, 2 cores): every crate's unit tests
# and the integration tests that need no server (tests/local: the binary end to end, the goldens and
# interop against the venv's PyTorch, pyarrow and facenet-pytorch, pages in headless Chromium). No S3
# server, no Ray.
test-fast: setup
    @scripts/bootstrap.sh --py --nextest --chromium
    cargo nextest run --workspace --no-fail-fast -E 'not binary_id(maskflow::servers)'

# Everything (what CI runs): the fast tier, plus tests/servers against a local S3 server that runs
# for the suite's duration on 127.0.0.1 (the shared store, fan-out, 3 rounds of the chaos suite)
# and a two-node Ray cluster on loopback; then the store crate's tests again as the default release
# build compiles it (without the `s3` feature), and the doc tests. Each test runs in its own process
# with a time limit (.config/nextest.toml). Test builds have the failpoints and s3 features; release
# builds never have failpoints.
test: setup
    @scripts/bootstrap.sh --py --s3 --ray --nextest --chromium
    scripts/with-s3.sh cargo nextest run --workspace --no-fail-fast
    cargo nextest run -p maskflow-remote --no-fail-fast
    cargo test --workspace --doc --quiet

# The chaos suite alone, for soak runs: ROUNDS rounds of three processes sharing one S3 store with
# kills, panics, a concurrent gc and a newer maskflow; invariants checked after every round.
# SEED reproduces a failure (it prints its seed). `just test` runs 3 rounds. No time limit.
chaos ROUNDS="20" SEED="": setup
    @scripts/bootstrap.sh --s3
    CHAOS_ROUNDS={{ROUNDS}} CHAOS_SEED={{ if SEED == "" { ROUNDS } else { SEED } }} scripts/with-s3.sh cargo test --test servers chaos -- --nocapture

# The Python references the tests and benchmarks compare with (torch's full CUDA set — Python's
# `import torch` needs it even on a CPU —, torchvision, pyarrow, facenet-pytorch, …). Idempotent.
py: setup
    @scripts/bootstrap.sh --py

# Record every stage kind's version and source hash in stages.lock (after bumping a VERSION, or to
# declare a source change output-neutral). The test suite fails while the lock is out of date.
lock-stages: setup
    MASKFLOW_WRITE_STAGES_LOCK=1 cargo test --quiet --test local architecture::stages_lock
    @git diff --stat stages.lock || true

# The declared graph of a pipeline with keys and states (`just graph FILE --dot` for Graphviz).
graph PIPELINE *ARGS: build
    {{bin}} graph {{PIPELINE}} {{ARGS}}

# Run any pipeline file: `just run pipelines/facemask.toml --force prep`.
run PIPELINE *ARGS: build
    {{bin}} run {{PIPELINE}} {{ARGS}}

# Which stages of a pipeline are cached, stale (and why) or missing — runs nothing.
status PIPELINE: build
    {{bin}} status {{PIPELINE}}

# All benchmarks, side by side against the Python peers; figures go to docs/BENCHMARKS.md by hand.
bench: bench-prep bench-prep-memory bench-train bench-store

# Compute: frozen step, full step and inference (mobilenet_v2 + fastai head, 224², bs 64) vs PyTorch eager.
bench-train THREADS="2" ITERS="6": py
    bench/train_bench.sh {{THREADS}} {{ITERS}}

# The real-data pipeline end to end (fresh store) vs the plain-PyTorch replica of the notebook on the same
# split: wall, RSS, ratio. BASELINE=1 also times the train stage without the recipe's damage and copies.
bench-e2e DATASET="../shared/datasets/face-mask": build py
    bench/e2e_bench.sh {{DATASET}}

# `maskflow detect` vs facenet-pytorch's MTCNN + the same TorchScript bundle from Python, on N 640×480
# scenes with 1–5 real faces from DATASET: photos/s, ratio, faces found and labelled right.
bench-detect BUNDLE DATASET="../shared/datasets/face-mask" N="60" THREADS="2": build py
    bench/detect_bench.sh {{BUNDLE}} {{DATASET}} {{N}} {{THREADS}}

# Face finding on annotated whole photos: `maskflow detect` with each detector (ssd, ssd260, mtcnn) on
# the held-out fifth of SCENES; recall of faces ≥ 32 px and of all, precision, wall, peak RSS.
bench-detect-recall BUNDLE SCENES="../shared/datasets/face-mask-scenes" THREADS="2": build
    bench/detect_recall.sh {{BUNDLE}} {{SCENES}} {{THREADS}}

# Index + prep of the real data: plain run vs plan/task/commit with the local executor vs Ray on a local
# two-node cluster (wall, byte identity, per-task overhead, a scaling projection).
bench-fanout PIPELINE="pipelines/facemask.toml" ITEMS="500": build py
    @scripts/bootstrap.sh --ray
    bench/fanout_bench.sh {{PIPELINE}} {{ITEMS}}

# A sweep's trainings one at a time (all threads) vs in parallel (--jobs N, 1 thread each), index +
# prep cached: wall, peak RSS, and whether the points' weights are byte-identical across settings.
bench-sweep PIPELINE="pipelines/demo.toml" SWEEP="lr": build
    bench/sweep_bench.sh {{PIPELINE}} {{SWEEP}}

# predict: single-image latency and batch throughput vs the same TorchScript bundle driven from Python.
bench-predict BUNDLE FOLDER="../shared/datasets/face-mask" N="256": py
    bench/predict_bench.sh {{BUNDLE}} {{FOLDER}} {{N}}

# A change of build settings: OLD (a maskflow binary built before it) vs target/release/maskflow on
# index + prep of the real data and the demo pipeline: wall times side by side, artifacts byte-identical.
bench-profile OLD DATASET="../shared/datasets/face-mask": build
    bench/profile_check.sh {{OLD}} target/release/maskflow {{DATASET}}

# Render a page maskflow wrote (report.html, runs.html, review.html) in headless Chromium (installed
# from Debian when missing); fail on a broken image or a script error; screenshot beside it.
report-check PAGE:
    @scripts/bootstrap.sh --chromium
    bench/report_check.sh {{PAGE}}

# The runs page of a pipeline (`maskflow runs NAME --html`), checked in headless Chromium like
# report-check: the table, curves overlaid, confusion matrices side by side, links to the reports.
runs-check PIPELINE PAGE="artifacts/runs/runs-check.html": build
    @scripts/bootstrap.sh --chromium
    {{bin}} runs {{PIPELINE}} --html {{PAGE}}
    bench/report_check.sh {{PAGE}}

# Shared store: push / pull of the real dataset's prep artifact to a local S3 server vs boto3 (aws s3 cp style).
# Builds the release binary with the `s3` feature (a later plain `just build` relinks without it).
bench-store DATASET="../shared/datasets/face-mask" ROUNDS="3": setup py
    @scripts/bootstrap.sh --s3
    @cargo build --release --quiet --bin maskflow --features s3
    bench/store_bench.sh {{DATASET}} {{ROUNDS}}

# prep: maskflow vs a PIL + pyarrow pipeline doing the same work, on ../shared/datasets/face-mask.
bench-prep DATASET="../shared/datasets/face-mask": build py
    bench/prep_bench.sh {{DATASET}}

# prep's peak RSS on the dataset and on the same files listed 4×: memory must not grow with size.
bench-prep-memory DATASET="../shared/datasets/face-mask": build py
    bench/prep_memory.sh {{DATASET}}
