#!/usr/bin/env python3
"""A local Ray cluster for maskflow's tests and benchmarks: a head node that runs no tasks and N
worker nodes (separate raylets and object stores, as separate machines would have) on 127.0.0.1.

Prints the cluster's address (`127.0.0.1:PORT`) on its first line once every node is up, and stops
by itself: when its parent process ends, on SIGTERM/SIGINT, or after --max-seconds (default 1800).

    scripts/ray-cluster.py [--nodes 2] [--cpus-per-node 1] [--max-seconds N]
"""
import argparse
import os
import signal
import sys
import threading
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=1800)
    args = ap.parse_args()

    # Everything on loopback: without this, Ray rewrites 127.0.0.1 to the machine's first
    # interface address when connecting (it only keeps loopback where "clusters" are disabled).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.cluster_utils import Cluster

    small = {"object_store_memory": 100 * 1024 * 1024, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", **small})
    try:
        for _ in range(args.nodes):
            cluster.add_node(num_cpus=args.cpus_per_node, node_ip_address="127.0.0.1", object_store_memory=small["object_store_memory"])
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        deadline = time.monotonic() + 120
        while len([n for n in ray.nodes() if n["Alive"]]) < args.nodes + 1:
            if time.monotonic() > deadline:
                print("ray-cluster: the nodes did not come up", file=sys.stderr)
                return 1
            time.sleep(0.2)
        ray.shutdown()
        print(cluster.address, flush=True)

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        parent = os.getppid()
        deadline = time.monotonic() + args.max_seconds
        while not stop.is_set() and time.monotonic() < deadline:
            if os.getppid() != parent:
                break  # the process that started us is gone
            stop.wait(0.5)
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
