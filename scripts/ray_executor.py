#!/usr/bin/env python3
"""maskflow's Ray executor: every task of a plan as a subprocess on a Ray cluster.

    python ray_executor.py --plan URL --tasks N --maskflow /path/to/maskflow [--address HOST:PORT]

`maskflow run --executor ray` runs this (the binary carries a copy); it can also be run by hand
on a plan made with `maskflow plan`. Each Ray task runs `maskflow task --plan URL --index I` on
whichever node Ray picks, with `--cpus-per-task` CPUs reserved and as many threads; it reads its
inputs from and writes its outputs to the shared store itself, so no pixels pass through Ray's
object store (the task returns one line of text). A failed task, or one whose node dies, is
retried (`--retries`); tasks are idempotent, so a retry or a duplicate is harmless.

The AWS_*, MASKFLOW_* and RUST_* variables of this process are passed to the tasks (the store's
endpoint and credentials). Prints one line per task and a summary: task runs per node.
"""
import argparse
import os
import random
import subprocess
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", required=True, help="the plan's URL (maskflow plan prints it)")
    ap.add_argument("--tasks", type=int, required=True, help="how many tasks the plan has")
    ap.add_argument("--maskflow", required=True, help="the maskflow binary (a path valid on every node)")
    ap.add_argument("--address", default=None, help="the Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    ap.add_argument("--retries", type=int, default=3, help="retries of a failed task")
    ap.add_argument("--cpus-per-task", type=int, default=1)
    ap.add_argument("--task-arg", action="append", default=[], help="an extra argument of `maskflow task` (repeat)")
    shuffle = os.environ.get("MASKFLOW_RAY_SHUFFLE")
    ap.add_argument("--shuffle", type=int, default=int(shuffle) if shuffle else None, metavar="SEED",
                    help="submit in a shuffled order (tests; default $MASKFLOW_RAY_SHUFFLE)")
    ap.add_argument("--duplicate", action="store_true", default=os.environ.get("MASKFLOW_RAY_DUPLICATE") == "1",
                    help="submit every index twice (tests; default $MASKFLOW_RAY_DUPLICATE=1)")
    args = ap.parse_args()

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address and address.split(":")[0] in ("127.0.0.1", "localhost"):
        # A cluster on loopback (scripts/ray-cluster.py): keep Ray from rewriting the address to
        # this machine's first interface (it only keeps loopback where "clusters" are disabled).
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray  # noqa: E402  (only on machines that run the driver)

    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "MASKFLOW_", "RUST_"))}
    env["RAYON_NUM_THREADS"] = str(args.cpus_per_task)
    ray.init(address=address, runtime_env={"env_vars": env},
             logging_level="ERROR", log_to_driver=False)

    @ray.remote(num_cpus=args.cpus_per_task, max_retries=args.retries, retry_exceptions=True)
    def run_task(i: int):
        node = ray.get_runtime_context().get_node_id()
        cmd = [args.maskflow, "task", "--plan", args.plan, "--index", str(i), "--quiet",
               "--device", "cpu", "--threads", str(args.cpus_per_task), *args.task_arg]
        started = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"maskflow task {i} failed on node {node[:12]} (exit {r.returncode}):\n{r.stderr[-3000:]}")
        return i, node, time.time() - started, r.stdout.strip()

    order = list(range(args.tasks))
    if args.shuffle is not None:
        random.Random(args.shuffle).shuffle(order)
    if args.duplicate:
        order = order + order[::-1]
    started = time.time()
    pending = {run_task.remote(i): i for i in order}
    per_node: dict = {}
    failed = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        ref = ready[0]
        i = pending.pop(ref)
        try:
            _, node, secs, line = ray.get(ref)
            per_node[node] = per_node.get(node, 0) + 1
            print(f"ray: {line} [node {node[:12]}, {secs:.2f}s]", flush=True)
        except Exception as e:  # a task that failed after its retries
            failed.append(i)
            print(f"ray: task {i} FAILED: {e}", file=sys.stderr, flush=True)
    nodes = ", ".join(f"{n[:12]}: {c}" for n, c in sorted(per_node.items()))
    print(f"ray: {len(order)} task runs ({args.tasks} tasks) in {time.time() - started:.2f}s on "
          f"{len(per_node)} node(s) ({nodes}); {len(failed)} failed", flush=True)
    ray.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
