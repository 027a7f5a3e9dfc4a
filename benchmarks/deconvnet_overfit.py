"""Can the DeconvNet baseline memorise one batch of strong crops? (a capacity diagnostic)

Trains a fresh `DeconvNet` with AdamW on one fixed batch of class-target crops from a
prepared directory and prints, every ``--every`` steps, the loss, the pixel accuracy over
C+1 classes and the figure/ground accuracy. A model that separates figure from ground
but stalls on the classes cannot carry class identity to the pixels at that width
(benchmarks/RESULTS.md, Table 1: width 1/8 stalls at ~68%, width 1/2 passes 79%).

    python benchmarks/deconvnet_overfit.py /tmp/t1/prep-5-all --width 0.125 --steps 400
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddn.models import normalize  # noqa: E402
from ddn.models.deconvnet import DeconvNet  # noqa: E402
from pipeline.readers import CropDataset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("prepared", type=Path)
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--arch", default="vgg16_bn", choices=("vgg16", "vgg16_bn"))
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    warp = round(args.input_size * 350 / 320)
    ds = CropDataset(args.prepared, warp_size=warp, crop_size=args.input_size,
                     seed=args.seed, target="classes")  # fmt: skip
    items = [ds[i] for i in torch.randperm(len(ds))[: args.batch].tolist()]
    x = normalize(torch.stack([it["image"] for it in items]).float())
    y = torch.stack([it["target"] for it in items]).long()
    valid = y != 255
    model = DeconvNet(ds.num_classes, args.arch, args.width, args.input_size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    rows = []
    for step in range(args.steps + 1):
        logits = model(x)
        loss = F.cross_entropy(logits, y, ignore_index=255)
        if step % args.every == 0:
            pred = logits.argmax(1)
            row = {
                "step": step,
                "loss": round(loss.item(), 4),
                "pixel_acc": round((pred == y)[valid].float().mean().item(), 3),
                "fg_bg_acc": round(((pred > 0) == (y > 0))[valid].float().mean().item(), 3),
            }
            rows.append(row)
            print(row, flush=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(json.dumps({"width": args.width, "steps": args.steps, "last": rows[-1]}))


if __name__ == "__main__":
    main()
