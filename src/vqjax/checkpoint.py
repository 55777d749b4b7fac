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
import re
from collections.abc import Callable
from typing import Any

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(ValueError):
  """A run folder that cannot be used as asked."""


def reason(error: BaseException, limit: int = 240) -> str:
  """A short one-line reason for `error`: an OS error's own words where it,
  or an error it was raised from, carries an errno (TensorStore's messages
  do), else its status and last clause (`OUT_OF_RANGE: Requested byte
  range ...`), else its text, shortened."""
  chain, seen = [], error
  while seen is not None and seen not in chain and len(chain) < 10:
    chain.append(seen)
    seen = seen.__cause__ or seen.__context__
  for e in chain:
    text = " ".join(str(e).split())
    if isinstance(e, OSError) and e.strerror:
      return e.strerror
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:
      return os.strerror(int(code.group(1)))
  for e in chain:
    # TensorStore appends `[tensorstore_spec='...']`, `[source locations=...]`.
    text = re.sub(r" \[[a-z_ ]+=.*$", "", " ".join(str(e).split()))
    status = re.match(r"([A-Z][A-Z_]+): ", text)  # a TensorStore/absl status
    if status:
      tail = text.rsplit(": ", 1)[1] if ": " in text[status.end():] else (
          text[status.end():])
      text = f"{status.group(1)}: {tail}"
      return text if len(text) <= limit else text[:limit - 3] + "..."
  text = " ".join(str(error).split()).split(" See full TensorStore")[0]
  if type(error).__name__ not in ("Exception", "ValueError", "RuntimeError"):
    text = f"{type(error).__name__}: {text}"  # e.g. a JSONDecodeError
  return text if len(text) <= limit else text[:limit - 3] + "..."


def step_folders(workdir: str) -> list[int]:
  """The steps of the complete checkpoints in `workdir`, oldest first,
  read from the folder names (Orbax renames a checkpoint into its `<step>`
  folder only once every file of it is written)."""
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  return sorted(int(n) for n in names
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def check_writable(workdir: str, flag: str = "--workdir") -> None:
  """Raises unless `workdir` is, or can be created as, a writable folder.

  Creates nothing: a bad input leaves no empty run folder behind.
  """
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise CheckpointError(
        f"Cannot use {flag}={workdir}: {existing} is a file, not a folder; "
        "pass a folder you can write to.")
  folders = [existing]
  if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
    folders.append(os.path.join(path, CHECKPOINT_DIR))
  for folder in folders:
    if not os.access(folder, os.W_OK | os.X_OK):
      raise CheckpointError(
          f"Cannot write to {flag}={workdir}: {folder} is not writable (read-"
          "only or another user's); pass a folder you can write to.")


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
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} cannot be read ({reason(e)}); it should "
                          "hold the run's config as JSON.") from e


# Keys of the architecture groups that say how a model is computed, not what
# it is: a run may resume with another value.
NOT_ARCHITECTURE = frozenset({"model.kernels", "model.dtype",
                              "data.read_threads", "data.prefetch_batches"})


def kind_of(config: dict) -> str:
  """Which script trains a run with this config (by its keys)."""
  if "vqvae_workdir" in config:
    return "prior (train_prior.py)"
  if "quantizer" in config:
    return "stage-1 (train_vqvae.py)"
  return "classifier"


def check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises unless `config` can resume the run in `workdir` (if it holds
  one): same kind of model, same architecture. Reads only `config.json`
  and folder names, so it is cheap enough to run before any data is read."""
  if not step_folders(workdir) or not os.path.isfile(
      os.path.join(workdir, CONFIG_FILE)):
    return
  current = config.to_dict()
  check_same_architecture(
      read_config(workdir).to_dict(), current, workdir,
      groups=tuple(g for g in ("data", "model", "quantizer") if g in current))


def check_same_architecture(saved: dict, current: dict, workdir: str,
                            groups: tuple[str, ...]) -> None:
  """Raises if a resumed run's config is of another kind of model, or
  changes any key of `groups` (other than those in `NOT_ARCHITECTURE`)."""
  # As JSON has them: a tuple in the config is a list in config.json.
  saved, current = (json.loads(json.dumps(c, default=list))
                    for c in (saved, current))
  old_kind, new_kind = kind_of(saved), kind_of(current)
  if old_kind != new_kind:
    raise CheckpointError(
        f"{workdir!r} holds a {old_kind} run, not a {new_kind} one; pass a "
        "new --workdir, or that run's own config to resume it.")
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
  """An Orbax `CheckpointManager` for one run's TrainState plus JSON metadata.

  Restoring without a step takes the newest checkpoint that can be read: an
  unreadable one (a corrupt file, a truncated copy) is passed over with a
  warning naming both steps. A save that fails (a full disk, a vanished
  folder) raises a `CheckpointError` that names the step, the folder and the
  latest complete checkpoint, which Orbax leaves as it was.
  """

  def __init__(self, workdir: str, max_to_keep: int | None = 3,
               create: bool = True):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if not create and not os.path.isdir(self.directory):
      raise CheckpointError(
          f"No checkpoints in {workdir!r} (expected {self.directory}); train "
          "there first or pass the right --workdir.")
    try:
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               create=create),
          item_names=("state", "meta"))
    except OSError as e:
      raise CheckpointError(
          f"Cannot create {self.directory} ({reason(e)}); pass a --workdir "
          "you can write to.") from e
    self._saving: int | None = None  # the step of a save not yet finished

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def _save_error(self, step: int | None, error: BaseException
                  ) -> CheckpointError:
    complete = [s for s in step_folders(self.workdir) if s != step]
    kept = (f"the latest complete checkpoint, step {complete[-1]} in "
            f"{os.path.join(self.directory, str(complete[-1]))}, is intact"
            if complete else "there is no earlier checkpoint")
    return CheckpointError(
        f"Saving checkpoint step {step} in {self.directory} failed "
        f"({reason(error)}); {kept}. Free space or fix the folder, then rerun "
        "the same command to resume.")

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves host-side `state` (unreplicated) and JSON-able `meta` at `step`.

    Waits for the previous save first, so its failure is reported here.
    """
    self.wait()
    self._saving = step
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                         force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e

  def _newest_readable(self, read: Callable[[int], Any], step: int | None):
    """`read(step)`, or with `step=None`, `read` of the newest checkpoint it
    does not fail on, with a warning for each one passed over."""
    if step is not None:
      if step not in self.all_steps():
        have = ", ".join(map(str, sorted(self.all_steps()))) or "none"
        raise CheckpointError(
            f"There is no checkpoint step {step} under {self.directory} (its "
            f"steps: {have}); it may have been rotated away (checkpoint."
            "max_to_keep).")
      try:
        return read(step)
      except CheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        path = os.path.join(self.directory, str(step))
        raise CheckpointError(
            f"Checkpoint step {step} in {path} cannot be read ({reason(e)}); "
            "move that folder away to fall back to the checkpoint before it, "
            "or restore it from a backup.") from e
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(
          f"No checkpoint found under {self.directory}; train there first or "
          "pass the --workdir of a trained run.")
    failures = []  # (step, reason) of each unreadable checkpoint
    for candidate in steps:
      try:
        result = read(candidate)
      except Exception as e:  # pylint: disable=broad-except
        failures.append((candidate, reason(e, 160)))
        continue
      if failures:
        logging.warning(
            "Checkpoint step %s in %s cannot be read (%s); using the previous "
            "complete one, step %d.", " and ".join(str(f[0]) for f in failures),
            self.directory, "; ".join(f[1] for f in failures), candidate)
      return result
    older = (f"; nor can the {len(failures) - 1} older one(s)"
             if len(failures) > 1 else "")
    raise CheckpointError(
        f"No checkpoint under {self.directory} can be read (step "
        f"{failures[0][0]}: {failures[0][1]}{older}); retrain, or restore "
        "the folder from a backup.")

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores `(state, meta, step)`; `target` gives the state's structure.
    Without `step`, the newest readable checkpoint."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)

    def read(s):
      restored = self._manager.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract),
          meta=ocp.args.JsonRestore()))
      return restored.state, restored.meta, s

    return self._newest_readable(read, step)

  def restore_variables(self, step: int | None = None) -> tuple[dict, dict, int]:
    """`(variables, meta, step)` of a saved TrainState, without its optimizer
    state: `variables = {"params": ..., **model_state}` for `module.apply`.
    Needs no target, so inference restores no optimizer. Without `step`,
    the newest readable checkpoint."""

    def read(s):
      restored = self._manager.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
      state = restored.state
      return ({"params": state["params"], **(state.get("model_state") or {})},
              restored.meta, s)

    return self._newest_readable(read, step)

  def restore_meta(self, step: int | None = None) -> tuple[dict, int]:
    """`(meta, step)`; without `step`, the newest readable checkpoint's."""

    def read(s):
      restored = self._manager.restore(
          s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      return restored.meta, s

    return self._newest_readable(read, step)

  def wait(self) -> None:
    """Waits for the save in flight; raises `CheckpointError` if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(self._saving, e) from e
    self._saving = None

  def close(self) -> None:
    self.wait()
    self._manager.close()
