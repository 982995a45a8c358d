"""The reference side of `tools/bench pipeline`, and the generator of its image folder.

make DIR --count N: writes N JPEGs of typical VTAB-1k sizes (32x32 CIFAR/SVHN, 64x64 EuroSAT/dSprites,
96x96 Camelyon/smallNORB, 256x256 RESISC45, 500x375 and 375x500 Pets/DTD/SUN397, 480x320 CLEVR,
1242x375 KITTI; smooth random content with noise, quality 90) as DIR/bench/images/*.jpg with the
list DIR/bench/train800.txt, the VTAB-1k export layout both sides read.

run DIR --batch B --workers N: decodes, resizes (shorter side 224, bilinear, antialiased), centre-crops
224 and normalises (ImageNet mean/std) into batches with a torchvision DataLoader of N worker
processes; prints {"images": n, "median_s": t, "images_per_s": n / t, "times_s": [...]} over
--repeats epochs after --warmup epochs (persistent workers, so their start-up is not counted).
"""
import argparse
import json
import os
import time

import numpy as np

SIZES = [(32, 32), (64, 64), (96, 96), (256, 256), (500, 375), (375, 500), (480, 320), (1242, 375)]


def make(a):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = os.path.join(a.dir, "bench")
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    lines = []
    for i in range(a.count):
        w, h = SIZES[i % len(SIZES)]
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 8, (h, w, 3)).astype(np.int16)
        name = f"images/{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(os.path.join(folder, name), quality=90)
        lines.append(f"{name} {i % 10}")
    with open(os.path.join(folder, "train800.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


class ListDataset:
    """The VTAB-1k list layout, read as an ImageFolder-style dataset (PIL decode)."""

    def __init__(self, folder, transform):
        self.folder, self.transform = folder, transform
        with open(os.path.join(folder, "train800.txt")) as f:
            self.items = [(p, int(l)) for p, l in (line.split() for line in f if line.strip())]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.items[i]
        with open(os.path.join(self.folder, path), "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.transform(img), label


def run(a):
    import torch
    from torchvision import transforms as T

    transform = T.Compose([
        T.Resize(224, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.CenterCrop(224),
        T.ToTensor(),
        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    ds = ListDataset(os.path.join(a.dir, "bench"), transform)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=a.batch, shuffle=False, num_workers=a.workers, persistent_workers=a.workers > 0
    )
    times = []
    for epoch in range(a.warmup + a.repeats):
        t = time.perf_counter()
        n = 0
        for x, y in loader:
            n += x.shape[0]
        if epoch >= a.warmup:
            times.append(time.perf_counter() - t)
    med = sorted(times)[len(times) // 2]
    print(json.dumps({"images": n, "median_s": med, "images_per_s": n / med, "times_s": times}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--count", type=int, default=512)
    r = sub.add_parser("run")
    r.add_argument("dir")
    r.add_argument("--batch", type=int, default=64)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    make(a) if a.cmd == "make" else run(a)


if __name__ == "__main__":
    main()
