"""Which kernels compute a model: `config.model.kernels`.

* `xla`: Flax's own layers, compiled by XLA for whatever backend runs them
  (cuDNN convolutions on a GPU, XLA's on a TPU).
* `xla_cpu`: the same layers computed by `vqjax.xla_cpu`'s formulations,
  which XLA:CPU runs fast (Winograd convolutions, custom VJPs).
* `auto` (the default): `xla_cpu` on the CPU backend, `xla` everywhere else.

The choice is not architecture: the parameters are the same for all three, so
a checkpoint trained with one restores and resumes with another.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import jax

from vqjax.configs import ConfigError

CHOICES = ("auto", "xla", "xla_cpu")


def resolve(name: str) -> str:
  """`auto` -> `xla_cpu` on the CPU backend, else `xla`; checks the name."""
  if name not in CHOICES:
    raise ConfigError(f"model.kernels={name!r} is not one of {CHOICES}; set "
                      "--config.model.kernels=auto (or xla, xla_cpu).")
  if name == "auto":
    return "xla_cpu" if jax.default_backend() == "cpu" else "xla"
  return name


def scope(name: str, inference: bool = False) -> ContextManager[None]:
  """Enter around `model.apply` (inside the traced step) to compute the model
  with the kernels `name` stands for.

  Args:
    name: one of `CHOICES`.
    inference: one-off encoding/decoding rather than a training step (on
      `xla_cpu`: direct convolutions, which compile faster and use less
      memory, instead of Winograd's).
  """
  if resolve(name) == "xla":
    return contextlib.nullcontext()
  from vqjax import xla_cpu  # pylint: disable=g-import-not-at-top
  return xla_cpu.kernels(winograd=not inference)


__all__ = ["CHOICES", "resolve", "scope"]
