"""Reference for benchmarks/allreduce.rs: torch.distributed (gloo) all-reduce of the same
number of f32 values, one tensor, under `torchrun --nproc_per_node N`. Rank 0 prints one JSON
line with the median seconds of --repeats after one warm-up."""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--floats", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    tensor = torch.ones(args.floats)
    dist.all_reduce(tensor)
    times = []
    for _ in range(args.repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(tensor)
        times.append(time.perf_counter() - start)
    times.sort()
    if int(os.environ["RANK"]) == 0:
        print(json.dumps({"tool": "torch.distributed gloo", "ranks": dist.get_world_size(), "floats": args.floats, "median_s": times[len(times) // 2]}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
