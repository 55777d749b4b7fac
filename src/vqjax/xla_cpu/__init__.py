"""The CPU backend's fast paths: the one seam for XLA:CPU-specific code.

* `kernels()`: Flax's own `nn.Conv`, `nn.ConvTranspose` and the quantizer's
  nearest-code search, computed by formulations XLA:CPU runs fast
  (`convolutions`, `winograd`, `quantizer`), on the same parameters.
  Selected by `config.model.kernels` through `vqjax.kernels`.
* `configure()`: process settings (malloc, one device per core, one thread
  per device) made before JAX starts, only when the CPU will be the backend.

Nothing outside this package knows how XLA:CPU is made fast; a GPU or TPU run
never enters it.
"""

from vqjax.xla_cpu.intercept import kernels
from vqjax.xla_cpu.process import backend_will_be_cpu, configure

__all__ = ["kernels", "configure", "backend_will_be_cpu"]
