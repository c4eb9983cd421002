"""lgg_jax: low-grade glioma segmentation in brain MRI with JAX and Flax NNX.

`from lgg_jax import Segmenter` loads a trained run or an export for Python use.
"""

__all__ = ["Segmenter"]


def __getattr__(name):
  # Imported on first use (PEP 562), so that `import lgg_jax.cli` or the data
  # layer does not load models, optimizers and checkpointing with the package.
  if name == "Segmenter":
    from lgg_jax.segmenter import Segmenter
    return Segmenter
  raise AttributeError(f"module 'lgg_jax' has no attribute {name!r}")
