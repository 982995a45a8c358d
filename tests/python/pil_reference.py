"""Reference outputs for tests/tests/pil_parity.rs: PIL resizes, torchvision Resize, timm's RandAugment ops.

Usage: pil_reference.py DIR. DIR/cases.json is a list of cases, each with `input` and `output` PNG names
(relative to DIR) and one of:
  {"op": "resize", "size": [w, h], "filter": "bilinear"|"bicubic"|"nearest"}   PIL Image.resize, horizontal
      pass first as every Pillow before 13 does (V-PETL's). Pillow 13 (python-pillow/Pillow#9549) runs the
      vertical pass first when the height shrinks much more than the width, which changes some bytes;
      resizing the width, then the height, is exactly the old single call.
  {"op": "tv_resize", "size": 256 | [h, w], "filter": ...}                      torchvision Resize
  {"op": "timm", "name": "Rotate", "magnitude": 9, "sign": 1|-1, "increasing": true}
      timm's op `name` at the fixed magnitude, with the random sign forced, and create_transform's
      hparams for 224 px and ImageNet mean (fill (124, 116, 104), bicubic, translate_const 100).
"""
import json
import sys
from pathlib import Path

from PIL import Image
from timm.data import auto_augment as aa
from torchvision import transforms as T

FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
TV = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC, "nearest": T.InterpolationMode.NEAREST}
# create_transform passes the PIL constant (str_to_pil_interp).
HPARAMS = dict(translate_const=100, img_mean=(124, 116, 104), interpolation=Image.BICUBIC)


def timm_op(img, name, magnitude, sign):
    op = aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=HPARAMS)
    # _randomly_negate negates when random.random() > 0.5; force the sign the test asks for.
    aa.random.random = (lambda: 1.0) if sign < 0 else (lambda: 0.0)
    return op(img)


def main():
    d = Path(sys.argv[1])
    for case in json.loads((d / "cases.json").read_text()):
        img = Image.open(d / case["input"]).convert("RGB")
        op = case["op"]
        if op == "resize":
            w, h = case["size"]
            out = img.resize((w, img.height), FILTERS[case["filter"]]).resize((w, h), FILTERS[case["filter"]])
        elif op == "tv_resize":
            out = T.Resize(case["size"], interpolation=TV[case["filter"]])(img)
        elif op == "timm":
            out = timm_op(img, case["name"], case["magnitude"], case["sign"])
        else:
            raise SystemExit(f"unknown op {op}")
        out.save(d / case["output"])


if __name__ == "__main__":
    main()
