#!/usr/bin/env python3
"""The peer of `maskflow push` / `pull`: what `aws s3 cp --recursive` does, with boto3 —
every file of a folder uploaded (or downloaded) through s3transfer, 10 requests at once (the AWS
CLI's default max_concurrent_requests), multipart above 8 MB (its default threshold). No hashing:
boto3 trusts what it reads. Prints one JSON line: bytes, seconds, MB/s.

    store_boto3.py up   ENDPOINT BUCKET PREFIX SRC_DIR
    store_boto3.py down ENDPOINT BUCKET PREFIX DEST_DIR
"""
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def main():
    mode, endpoint, bucket, prefix, folder = sys.argv[1:6]
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
        config=Config(max_pool_connections=20),
    )
    cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=10)
    started = time.perf_counter()
    if mode == "up":
        files = []
        for root, _, names in os.walk(folder):
            for n in names:
                p = os.path.join(root, n)
                files.append((p, f"{prefix}/{os.path.relpath(p, folder)}"))
        def up(item):
            s3.upload_file(item[0], bucket, item[1], Config=cfg)
            return os.path.getsize(item[0])
        with ThreadPoolExecutor(10) as ex:
            total = sum(ex.map(up, files))
    else:
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            keys += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
        def down(item):
            dest = os.path.join(folder, item[0][len(prefix) + 1:])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            s3.download_file(bucket, item[0], dest, Config=cfg)
            return item[1]
        with ThreadPoolExecutor(10) as ex:
            total = sum(ex.map(down, keys))
    secs = time.perf_counter() - started
    print(json.dumps({"bytes": total, "seconds": round(secs, 3), "mb_per_s": round(total / 1e6 / secs, 1)}))


if __name__ == "__main__":
    main()
