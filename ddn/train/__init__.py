"""Trainers: `train_cls` (the classifier) and `train_seg` (bridge + segmenter).

Modules: `run` (run directory, config.json, metrics.csv, checkpoints, RNG state),
`distributed` (torchrun/DDP, the seeded resumable index stream), `schedule` (warm-up /
decay, the reference's iteration table), `loop` (device, precision, progress),
`cls` and `seg` (the two loops), `gpu_crops` (training crops cut on the device).
"""
