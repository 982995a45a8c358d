#!/usr/bin/env python3
"""Writes the paper-grid configs: configs/{vtab,fgvc}/<method>/<task>.yaml for every image method.

Each leaf composes `_base_` pieces (model, dataset, schedule, runtime, method) and sets the head's
class count and the learning rate and weight decay V-PETL's scripts use for that method and task
(../shared/reference/upstream_spec.md §3.4 and §3.5). Methods are the files in
configs/_base_/methods/; a folder `<method>/` holds per-task settings (NOAH's searched sub-networks,
SCT's and GPS's per-task batch and learning rates). Those override the dataset and schedule bases,
which sibling bases may not do, so they are merged into the leaf itself.

Usage: scripts/make_grid_configs.py          write the configs
       scripts/make_grid_configs.py --check  exit 1 if any committed config differs (the tests run this)
"""
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
METHODS = CONFIGS / "_base_" / "methods"

# Class counts (the head's; tests/tests/config_grid.rs checks they equal the dataset bases').
CLASSES = {
    "cifar100": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37,
    "svhn": 10, "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45,
    "diabetic_retinopathy": 5, "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4,
    "dsprites_loc": 16, "dsprites_ori": 16, "smallnorb_azi": 18, "smallnorb_ele": 9,
    "CUB_200_2011": 200, "nabirds": 555, "OxfordFlower": 102, "StanfordDogs": 120, "StanfordCars": 196,
}
VTAB = [
    "cifar100", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397",
    "patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy", "clevr_count", "clevr_dist",
    "dmlab", "kitti", "dsprites_loc", "dsprites_ori", "smallnorb_azi", "smallnorb_ele",
]
FGVC = ["CUB_200_2011", "nabirds", "OxfordFlower", "StanfordDogs", "StanfordCars"]

# §3.4: the lr / wd list V-PETL's scripts share across methods (only cifar100 and caltech101 vary).
VTAB_COMMON = {
    "cifar100": (0.01, 1.0), "caltech101": (0.006, 0.35), "dtd": (0.0032, 0.04),
    "oxford_flowers102": (0.05, 0.11), "oxford_iiit_pet": (0.0007, 0.8), "svhn": (0.001, 0.005),
    "sun397": (0.0017, 0.01), "patch_camelyon": (0.0072, 0.002), "eurosat": (0.06, 0.001),
    "resisc45": (0.01, 0.01), "diabetic_retinopathy": (0.004, 0.0003), "clevr_count": (0.0033, 0.01),
    "clevr_dist": (0.0018, 0.005), "dmlab": (0.009, 0.1), "kitti": (0.0072, 0.0001),
    "dsprites_loc": (0.003, 0.001), "dsprites_ori": (0.01, 0.05), "smallnorb_azi": (0.0062, 0.005),
    "smallnorb_ele": (0.0011, 0.0005),
}
VTAB_OVERRIDES = {
    "bitfit": {"cifar100": (3e-3, 1e-4), "caltech101": (0.006, 0.25)},
    "linear_probe": {"cifar100": (1e-3, 1e-4)},
    "ln_tune": {"cifar100": (0.008, 0.01), "caltech101": (0.005, 0.01)},
    "lora": {"cifar100": (0.005, 0.005)},
    "vpt_shallow": {"cifar100": (1e-3, 1e-4)},
    # Full FT: dtd is a sweep upstream; its first setting is used.
    "full_finetune": {
        "cifar100": (5e-4, 1e-1), "caltech101": (5e-4, 5e-3), "dtd": (1e-4, 5e-1),
        "oxford_flowers102": (5e-3, 5e-5), "oxford_iiit_pet": (5e-3, 5e-5), "svhn": (1e-3, 6e-3),
        "sun397": (2e-3, 1e-2), "patch_camelyon": (7e-3, 2e-3), "eurosat": (3e-3, 5e-2),
        "resisc45": (1e-2, 1e-2), "diabetic_retinopathy": (4e-3, 3e-4), "clevr_count": (3e-3, 1e-2),
        "clevr_dist": (2e-3, 5e-3), "dmlab": (9e-3, 1e-1), "kitti": (1e-2, 1e-4),
        "dsprites_loc": (3e-3, 1e-3), "dsprites_ori": (1e-2, 5e-2), "smallnorb_azi": (6e-3, 5e-3),
        "smallnorb_ele": (1e-3, 5e-4),
    },
}
# §3.5: identical for every method.
FGVC_LR_WD = {
    "CUB_200_2011": (1e-3, 5e-2), "nabirds": (2e-4, 5e-2), "OxfordFlower": (1e-3, 5e-2),
    "StanfordDogs": (2.5e-4, 5e-2), "StanfordCars": (2e-3, 5e-2),
}
# Settings a method changes in the shared bases (sibling bases may not set the same value, so these
# go into the leaf): Full FT's schedule (§4.2), GPS's optimiser.
LEAF_EXTRA = {
    "full_finetune": {"param_scheduler": {"lr_min": 1e-6, "warmup_lr_init": 1e-4}},
    # GPS trains with Adam, no weight decay.
    "gps": {"optim_wrapper": {"optimizer": {"weight_decay": 0.0}}},
    # NOAH's retraining recipe (configs/NOAH/VTAB/subnet/slurm_retrain_vtab.sh).
    "noah_search": {"optim_wrapper": {"optimizer": {"lr": 1e-3, "weight_decay": 1e-4}}},
}
# Methods with their own per-task recipe: (lr, weight decay, drop path) by task. HST's official
# scripts (missing_methods.md §12, AFeng-x/HST train_scripts/vit/{vtab,fgvc}); its drop path is the
# ViT's drop_path_rate and the side network's (the official code passes one rate to both).
OWN_RECIPE = {
    "hst": {
        "caltech101": (1e-3, 5e-4, 0.1), "cifar100": (1e-2, 5e-4, 0.0), "clevr_count": (1e-3, 5e-4, 0.1),
        "clevr_dist": (5e-3, 5e-4, 0.1), "diabetic_retinopathy": (1e-3, 5e-5, 0.1), "dmlab": (5e-3, 5e-4, 0.1),
        "dsprites_loc": (5e-3, 5e-4, 0.1), "dsprites_ori": (1e-3, 5e-4, 0.1), "dtd": (1e-2, 5e-4, 0.0),
        "eurosat": (1e-3, 5e-4, 0.1), "oxford_flowers102": (1e-3, 5e-5, 0.0), "kitti": (5e-3, 5e-2, 0.1),
        "patch_camelyon": (5e-3, 5e-4, 0.1), "oxford_iiit_pet": (1e-2, 5e-4, 0.0), "resisc45": (5e-3, 5e-4, 0.0),
        "smallnorb_azi": (1e-3, 5e-4, 0.1), "smallnorb_ele": (1e-3, 5e-2, 0.2), "sun397": (1e-2, 5e-5, 0.0),
        "svhn": (1e-2, 5e-5, 0.1),
        "CUB_200_2011": (1e-3, 5e-2, 0.0), "nabirds": (5e-4, 5e-2, 0.0), "OxfordFlower": (1e-3, 5e-5, 0.0),
        "StanfordCars": (5e-3, 5e-2, 0.0), "StanfordDogs": (5e-3, 5e-2, 0.0),
    },
}
# Methods defined for one suite only (NOAH's search reads VTAB's train800 and val200 splits).
ONLY_SUITE = {"noah_search": "vtab"}
# Methods defined on hierarchical backbones only (they refuse a ViT).
NOT_ON_VIT = {"e3va"}


def methods():
    names = {p.stem for p in METHODS.glob("*.yaml")} | {p.name for p in METHODS.iterdir() if p.is_dir()}
    return sorted(n for n in names if n not in NOT_ON_VIT)


def deep_merge(a, b):
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            deep_merge(a[k], v)
        else:
            a[k] = v
    return a


def leaf(suite, method, task):
    bases = ["../../_base_/models/vit_b16_in21k.yaml", f"../../_base_/datasets/{suite}/{task}.yaml",
             f"../../_base_/schedules/vpetl_{suite}.yaml", "../../_base_/default_runtime.yaml"]
    if ONLY_SUITE.get(method, suite) != suite:
        return None
    whole, per_task = METHODS / f"{method}.yaml", METHODS / method / f"{task}.yaml"
    if whole.exists():
        bases.append(f"../../_base_/methods/{method}.yaml")
    elif not per_task.exists():
        return None  # a per-task method without settings for this task
    if suite == "vtab":
        lr, wd = VTAB_OVERRIDES.get(method, {}).get(task, VTAB_COMMON[task])
        source = "upstream_spec.md §3.4"
    else:
        lr, wd = FGVC_LR_WD[task]
        source = "upstream_spec.md §3.5"
    settings = {"model": {"head": {"num_classes": CLASSES[task]}},
                "optim_wrapper": {"optimizer": {"lr": lr, "weight_decay": wd}}}
    if task in OWN_RECIPE.get(method, {}):
        lr, wd, drop_path = OWN_RECIPE[method][task]
        entry = yaml.safe_load(whole.read_text())["model"]["methods"][0]
        settings = {"model": {"backbone": {"drop_path_rate": drop_path}, "head": {"num_classes": CLASSES[task]},
                              "methods": [dict(entry, drop_path=drop_path)]},
                    "optim_wrapper": {"optimizer": {"lr": lr, "weight_decay": wd}}}
        source = "OWN_RECIPE: the official per-task recipe, missing_methods.md §12"
    deep_merge(settings, LEAF_EXTRA.get(method, {}))
    if per_task.exists():
        deep_merge(settings, yaml.safe_load(per_task.read_text()) or {})
        source = f"configs/_base_/methods/{method}/{task}.yaml over {source}"
    lines = [f"# Generated by scripts/make_grid_configs.py: {method} on {suite} {task} (settings: {source}).",
             "_base_:"] + [f"  - {b}" for b in bases]
    for key, value in settings.items():
        lines.append(yaml.safe_dump({key: value}, default_flow_style=None, sort_keys=False, width=10000).strip())
    return "\n".join(lines) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    expected = set()
    for suite, tasks in (("vtab", VTAB), ("fgvc", FGVC)):
        for method in methods():
            for task in tasks:
                text = leaf(suite, method, task)
                if text is None:
                    continue
                path = CONFIGS / suite / method / f"{task}.yaml"
                expected.add(path)
                if not path.exists() or path.read_text() != text:
                    stale.append(path)
                    if not check:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_text(text)
    extra = [p for suite in ("vtab", "fgvc") for p in (CONFIGS / suite).rglob("*.yaml") if p not in expected]
    if check:
        if stale or extra:
            for p in stale:
                print(f"out of date: {p.relative_to(ROOT)}")
            for p in extra:
                print(f"not generated (remove it or its method base is missing): {p.relative_to(ROOT)}")
            print("run scripts/make_grid_configs.py")
            sys.exit(1)
        print(f"{len(expected)} grid configs up to date")
    else:
        for p in extra:
            p.unlink()
        print(f"{len(expected)} grid configs ({len(stale)} written, {len(extra)} removed)")


if __name__ == "__main__":
    main()
