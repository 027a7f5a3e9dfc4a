"""The GPU crop path: training crops cut on the device, no DataLoader.

`DeviceCrops` keeps every source image and label map of the strong set on the device
(VOC's 1,464 full masks: about 1.5 GB of uint8) and cuts a batch of crops from the
crop table's (image, box, subset) rows in a few kernels. It produces what `CropDataset`
produces for the same (index, epoch) keys:

- the same window parameters (`CropDataset.crop_params`: the warp-size square's random
  ``crop`` window and flip, from (seed, epoch, index));
- the target bit for bit: the label sample indices come from the very function the CPU
  reader uses (`pipeline.training_crop._source_index`, float64), then the subset's
  figure/ground lookup (the identity for ``target="classes"``), 255 outside the image;
- the image up to interpolation rounding: ``torchvision.ops.roi_align(aligned=True,
  sampling_ratio=1)`` samples bin centres x0 - 0.5 + (u + 0.5)(x1 - x0)/S in pixel-centre
  coordinates, i.e. continuous x = x0 + (u + 0.5)(x1 - x0)/S, the points of
  `pipeline.cropping`; the window is cut directly (its box is the warped box's
  sub-box, so the warp's discarded border is never computed). cv2 interpolates in
  fixed point (1/32 px, 15-bit weights), roi_align in float: a few grey levels apart at
  sharp edges (tests/test_gpu_crops.py measures it).

Border: roi_align clamps samples in [-1, 0) to the edge pixel, while cv2's
BORDER_CONSTANT blends the edge pixel with the zero outside. Each image is therefore
stored with a one-pixel zero border (boxes shifted by it), so both blend with 0; past
that border roi_align returns 0, as cv2 does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.cropping import IGNORE
from pipeline.readers import CropDataset
from pipeline.shards import subset_classes
from pipeline.training_crop import CLASS_LUT, _source_index

PAD = 1  # zero border around each stored image (see module doc)


class DeviceCrops:
    """Source images + label maps of a `CropDataset` on ``device``; `batch` cuts crops."""

    def __init__(self, dataset: CropDataset, device: torch.device | str = "cpu") -> None:
        self.dataset, self.device = dataset, torch.device(device)
        self.warp, self.crop, self.num_classes = (
            dataset.warp_size,
            dataset.crop_size,
            dataset.num_classes,
        )
        shards = dataset.shards
        images, masks, label_rows = [], [], []
        crop_image, crop_subset, crop_box = [], [], []
        for shard in range(len(shards.files)):
            cols = shards.columns(shard)
            first = len(images)
            for row in range(len(cols["labels"])):
                image, labels = dataset._decode(shard, row, mask=True)
                images.append(image)
                masks.append(labels)
            label_rows.append(cols["labels"])
            crop_image.append(cols["crop_image"].astype(np.int64) + first)
            crop_subset.append(cols["crop_subset"])
            crop_box.append(cols["crop_box"].astype(np.float64))
        self.label_rows = np.concatenate(label_rows)  # (N, C) multi-hot per source image
        self.crop_image = np.concatenate(crop_image)  # global source image of each crop
        self.crop_subset = np.concatenate(crop_subset)
        self.crop_box = np.concatenate(crop_box)
        self.sizes = np.array([m.shape for m in masks], np.int64)  # (N, 2) h, w
        hmax, wmax = self.sizes.max(0)
        stack = np.zeros((len(images), 3, hmax + 2 * PAD, wmax + 2 * PAD), np.uint8)
        label_stack = np.full((len(masks), hmax, wmax), IGNORE, np.uint8)
        for i, (image, labels) in enumerate(zip(images, masks, strict=True)):
            h, w = labels.shape
            stack[i, :, PAD : PAD + h, PAD : PAD + w] = image.transpose(2, 0, 1)
            label_stack[i, :h, :w] = labels
        self.images = torch.from_numpy(stack).to(self.device)
        self.labels = torch.from_numpy(label_stack).to(self.device)

    @staticmethod
    def bytes_needed(dataset: CropDataset) -> int:
        """Device memory the stacks will take (from the shards' stored image shapes)."""
        shapes = np.concatenate(
            [dataset.shards.file(s)["image_shapes"][()] for s in range(len(dataset.shards.files))]
        )
        hmax, wmax = shapes.max(0)
        return int(len(shapes) * ((hmax + 2 * PAD) * (wmax + 2 * PAD) * 3 + hmax * wmax))

    def __len__(self) -> int:
        return len(self.crop_image)

    def batch(self, keys: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Crops of (index, epoch) keys: ``image`` float32 (B, 3, S, S) in 0..255 (not
        rounded), ``target`` uint8 (B, S, S), ``subset`` float32 (B, C), ``index``."""
        n, warp, crop, c = len(keys), self.warp, self.crop, self.num_classes
        index = np.array([k[0] for k in keys], np.int64)
        src = self.crop_image[index]
        boxes = self.crop_box[index]
        rois = np.zeros((n, 5))
        cols, rows = np.zeros((n, crop), np.int64), np.zeros((n, crop), np.int64)
        flips = np.zeros(n, bool)
        luts = np.zeros((n, 256), np.uint8)
        luts[:, IGNORE] = IGNORE
        subsets = np.zeros((n, c), np.float32)
        for b, (i, epoch) in enumerate(keys):
            self.dataset.set_epoch(epoch)
            top, left, flips[b] = self.dataset.crop_params(i)
            x0, y0, x1, y1 = boxes[b]
            xs = _source_index(x0, x1, warp, left, crop).astype(np.int64)
            cols[b] = xs[::-1] if flips[b] else xs
            rows[b] = _source_index(y0, y1, warp, top, crop).astype(np.int64)
            # The window's own box: warp pixels left..left+crop of the warped box.
            sx, sy = (x1 - x0) / warp, (y1 - y0) / warp
            rois[b, 1:] = (x0 + left * sx + PAD, y0 + top * sy + PAD,
                           x0 + (left + crop) * sx + PAD, y0 + (top + crop) * sy + PAD)  # fmt: skip
            subset = subset_classes(self.label_rows[src[b]], int(self.crop_subset[i]))
            if self.dataset.target == "classes":  # the DeconvNet baseline: class labels
                luts[b] = CLASS_LUT
            else:
                luts[b, subset] = 1
            subsets[b, [k - 1 for k in subset]] = 1

        # Imported here: torchvision costs every process that imports it ~90 MB of its own
        # memory plus ~80 MB of libraries, and train-seg's DataLoader workers fork from
        # a process that imports this module but, on the CPU crop path, never cuts here.
        from torchvision.ops import roi_align

        dev = self.device
        unique, inverse = np.unique(src, return_inverse=True)
        rois[:, 0] = inverse
        sources = self.images[torch.from_numpy(unique).to(dev)].float()
        image = roi_align(
            sources, torch.from_numpy(rois).to(dev, torch.float32), output_size=crop,
            spatial_scale=1.0, sampling_ratio=1, aligned=True,
        )  # fmt: skip
        flip_t = torch.from_numpy(flips).to(dev)
        image = torch.where(flip_t[:, None, None, None], image.flip(-1), image)

        sizes = torch.from_numpy(self.sizes[src]).to(dev)
        src_t = torch.from_numpy(src).to(dev)
        rows_t, cols_t = torch.from_numpy(rows).to(dev), torch.from_numpy(cols).to(dev)
        h, w = sizes[:, 0:1], sizes[:, 1:2]
        window = self.labels[
            src_t[:, None, None],
            torch.minimum(rows_t.clamp(min=0), h - 1)[:, :, None],
            torch.minimum(cols_t.clamp(min=0), w - 1)[:, None, :],
        ]
        target = torch.from_numpy(luts).to(dev).gather(1, window.flatten(1).long())
        target = target.view(n, crop, crop)
        outside = ((rows_t < 0) | (rows_t >= h))[:, :, None] | ((cols_t < 0) | (cols_t >= w))[
            :, None, :
        ]
        target = target.masked_fill(outside, IGNORE)
        return {
            "image": image,
            "target": target,
            "subset": torch.from_numpy(subsets).to(dev),
            "index": torch.from_numpy(index),
        }
