"""Overrides shared by the sweeps' CI-sized (--tiny) variants."""

# Synthetic data, 32x32, tiny widths: each member trains in seconds on a CPU.
TINY = {
    "data.image_size": 32, "data.synthetic.num_patients": 10, "data.synthetic.min_slices": 6,
    "data.synthetic.max_slices": 8, "model.unet.base_width": 4, "model.unet.depth": 3,
    "model.fpn.base_width": 4, "model.fpn.pyramid_channels": 8, "model.fpn.segmentation_channels": 8,
    "model.fpn.group_norm_groups": 4, "model.resnext_unet.stem_width": 8, "model.resnext_unet.blocks": (1, 1, 1, 1),
    "model.resnext_unet.groups": 4, "model.resnext_unet.width_per_group": 16, "global_batch_size": 8, "eval_batch_size": 16, "num_epochs": 1,
    "schedule.warmup_steps": 2, "write_report": False,
}


def members(grid: list[dict], tiny: bool, folds=range(5)) -> list[dict]:
  """Every grid point on every fold; the tiny variant runs fold 0 only."""
  return [{**g, "split.fold": f} for g in grid for f in ((0,) if tiny else folds)]


def common(tiny: bool) -> dict:
  """Overrides applied to every member (not part of member names)."""
  return dict(TINY) if tiny else {}
