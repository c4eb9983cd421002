"""lgg_jax: low-grade glioma segmentation in brain MRI with JAX and Flax NNX.

`from lgg_jax import Segmenter` loads a trained run or an export for Python use.
"""

from lgg_jax.segmenter import Segmenter

__all__ = ["Segmenter"]
