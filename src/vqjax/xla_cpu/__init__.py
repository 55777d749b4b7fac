"""The CPU backend's fast paths: the one place for XLA:CPU-specific code.

* `Conv`, `ConvTranspose`: Flax's own layers (same fields, parameters and
  names), computed by formulations XLA:CPU runs fast (`convolutions`,
  `winograd`); `valid_conv`, the Gated PixelCNN's convolution by Winograd's
  algorithm; `nearest_code`, the quantizer's search. `vqjax.models.build`
  injects them into the models when `config.model.kernels` says `xla_cpu`
  (`auto` on the CPU backend).
* `configure()`: process settings (malloc, one device per core, one thread
  per device) made before JAX starts, only when the CPU will be the backend.

Nothing here imports a model, and a GPU or TPU run never executes it.
"""

from vqjax.xla_cpu.layers import Conv, ConvTranspose, nearest_code, valid_conv
from vqjax.xla_cpu.process import backend_will_be_cpu, configure

__all__ = ["Conv", "ConvTranspose", "valid_conv", "nearest_code", "configure",
           "backend_will_be_cpu"]
