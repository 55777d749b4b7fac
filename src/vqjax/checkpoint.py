"""Orbax checkpoints of a run, its config, and the stage-1 -> stage-2 link.

A run folder looks like:
  workdir/config.json           the run's config (written at start)
  workdir/checkpoints/<step>/   Orbax: `state` (TrainState) and `meta` (JSON)

`meta` holds the config too, so a checkpoint is self-describing; a prior's
`meta` also holds `vqvae: {workdir, step, config}`, the VQ-VAE it was trained on.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(ValueError):
  """A run folder that cannot be used as asked."""


def config_to_dict(config: ml_collections.ConfigDict | dict) -> dict:
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json())
  return dict(config)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was started with."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise CheckpointError(
        f"{workdir!r} is not a vqjax run folder (no {CONFIG_FILE}); pass the "
        "--workdir of a finished training run.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


# Keys of the architecture groups that say how a model is computed, not what
# it is: a run may resume with another value.
NOT_ARCHITECTURE = frozenset({"model.kernels", "model.dtype",
                              "data.read_threads", "data.prefetch_batches"})


def check_same_architecture(saved: dict, current: dict, workdir: str,
                            groups: tuple[str, ...]) -> None:
  """Raises if a resumed run's config changes any key of `groups` (other
  than those in `NOT_ARCHITECTURE`)."""
  # As JSON has them: a tuple in the config is a list in config.json.
  saved, current = (json.loads(json.dumps(c, default=list))
                    for c in (saved, current))
  for group in groups:
    old, new = saved.get(group, {}), current.get(group, {})
    for key in sorted(set(old) | set(new)):
      if f"{group}.{key}" in NOT_ARCHITECTURE:
        continue
      if old.get(key) != new.get(key):
        raise CheckpointError(
            f"{workdir!r} holds a run trained with {group}.{key}="
            f"{old.get(key)!r}, but this config says {new.get(key)!r}; use a "
            "new --workdir or the same config to resume.")


class Checkpointer:
  """An Orbax `CheckpointManager` for one run's TrainState plus JSON metadata."""

  def __init__(self, workdir: str, max_to_keep: int | None = 3,
               create: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if not create and not os.path.isdir(self.directory):
      raise CheckpointError(
          f"No checkpoints in {workdir!r} (expected {self.directory}); train "
          "there first or pass the right --workdir.")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=create),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves host-side `state` (unreplicated) and JSON-able `meta` at `step`."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                       force=True)

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores `(state, meta, step)`; `target` gives the state's structure."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint found under {self.directory}.")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta, step

  def restore_variables(self, step: int | None = None) -> tuple[dict, dict, int]:
    """`(variables, meta, step)` of a saved TrainState, without its optimizer
    state: `variables = {"params": ..., **model_state}` for `module.apply`.
    Needs no target, so inference restores no optimizer."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint found under {self.directory}.")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    state = restored.state
    return ({"params": state["params"], **(state.get("model_state") or {})},
            restored.meta, step)

  def restore_meta(self, step: int | None = None) -> tuple[dict, int]:
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint found under {self.directory}.")
    restored = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored.meta, step

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
