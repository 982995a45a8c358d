"""Forward-pass timing of a timm model, the reference side of `tools/bench backbones`.

Prints one JSON object: {"model": ..., "batch": ..., "median_s": ..., "times_s": [...]}.
"""
import argparse
import json
import time

import timm
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = timm.create_model(a.model, pretrained=False, img_size=a.img_size).eval()
    x = torch.randn(a.batch, 3, a.img_size, a.img_size)
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.repeats):
            t = time.perf_counter()
            model(x)
            if i >= a.warmup:
                times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({"model": a.model, "batch": a.batch, "median_s": times[len(times) // 2], "times_s": times}))


if __name__ == "__main__":
    main()
