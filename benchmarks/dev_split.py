"""A development split carved out of a folder-format dataset's train split.

Choosing a setting by its score on the val split tunes to that split; this writes a
folder-format view of ROOT (``images``/``masks`` linked, ``classes.txt`` copied) whose
``splits/train.txt`` and ``splits/val.txt`` are a seeded partition of ROOT's train split
only, so settings can be compared on held-out *training* images and the real val split
stays for reporting. ``labels.csv`` is linked too when present.

    python benchmarks/dev_split.py ../shared/data/msrc_things data/msrc_dev
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="A folder-format dataset with splits/train.txt.")
    p.add_argument("out", type=Path)
    p.add_argument("--val-fraction", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    root = args.root.resolve()
    ids = [line.strip() for line in (root / "splits" / "train.txt").read_text().splitlines()]
    ids = [i for i in ids if i]
    random.Random(args.seed).shuffle(ids)
    keep = int((1 - args.val_fraction) * len(ids))
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("images", "masks", "labels.csv"):
        if (root / name).exists() and not (args.out / name).exists():
            (args.out / name).symlink_to(root / name)
    shutil.copyfile(root / "classes.txt", args.out / "classes.txt")
    (args.out / "splits").mkdir(exist_ok=True)
    for name, part in (("train", ids[:keep]), ("val", ids[keep:])):
        (args.out / "splits" / f"{name}.txt").write_text("".join(f"{i}\n" for i in sorted(part)))
    print(f"{args.out}: {keep} train, {len(ids) - keep} val (from {root}'s train split)")


if __name__ == "__main__":
    main()
