"""What the top-level scripts share: flags, clear one-line errors, devices."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

from absl import app, flags, logging

from vqjax import xla_cpu
from vqjax.checkpoint import CheckpointError
from vqjax.configs import ConfigError
from vqjax.data import DataError
from vqjax.train import guard

# Errors that mean "the input was wrong", reported in one line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CheckpointError, ConfigError,
                                                DataError, guard.TrainingError)


def init_distributed(coordinator_address: str = "", num_processes: int = 0,
                     process_id: int = -1) -> None:
  """Joins a multi-host run through `jax.distributed.initialize`.

  With `coordinator_address` (`host:port` of process 0), `num_processes` and
  `process_id` given, those; with none of them but `JAX_COORDINATOR_ADDRESS`
  or `VQJAX_DISTRIBUTED=1` in the environment, JAX's own cluster detection
  (SLURM, Open MPI, Cloud TPU, GKE, ...). Otherwise a no-op: one process.
  """
  import jax  # pylint: disable=g-import-not-at-top
  given = {"coordinator_address": bool(coordinator_address),
           "num_processes": num_processes > 0, "process_id": process_id >= 0}
  if any(given.values()):
    if not all(given.values()):
      missing = ", ".join(f"--{name}" for name, ok in given.items() if not ok)
      raise ConfigError(
          "A multi-host launch needs --coordinator_address, --num_processes "
          f"and --process_id together; missing: {missing}.")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get(
      "VQJAX_DISTRIBUTED"):
    jax.distributed.initialize()


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).replace("\\n", " ").split()).strip("'\"")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config mistakes (a misspelt `--config.a.b`, a bad
  config file or value) reported in one line instead of a traceback."""
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
      flags.FLAGS.config.keys()  # config_flags defers load errors to first use
    return rest
  except OSError as e:
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
                "?")
    reason = ("no such file" if not os.path.exists(path.split(":")[0])
              else _one_line(e))
    print(f"error: cannot load --config={path}: {reason}; pass the path of a "
          "config file such as configs/mnist_vqvae.py.", file=sys.stderr)
  except flags.Error as e:
    message = str(e)
    if "Traceback" in message:  # keep the flag and the config file's own error
      flag = message.split(":", 1)[0]
      message = f"{flag}: {message.strip().splitlines()[-1]}"
    print(f"error: {_one_line(message)}", file=sys.stderr)
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a key that is not there.
    match = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', str(e))
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    wrong = match.group(2) if match else _one_line(e).split()[0].strip("'\"")
    culprit = next((o for o in overrides if f".{wrong}." in o + "."),
                   "a --config override")
    hint = f' (did you mean "{match.group(1)}"?)' if match else ""
    print(f"error: {culprit} names no key of the config{hint}; "
          "config keys cannot be added from the command line.",
          file=sys.stderr)
  except Exception as e:  # the config file itself failed to load
    print(f"error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
  sys.exit(2)


def run(main: Callable[[], None],
        cpu_devices: Callable[[], tuple[int | None, tuple[int, ...]]]
        = lambda: (None, ()), distributed: Callable[[], dict] = dict) -> None:
  """`app.run` with user errors printed as one line and exit status 2.

  Before JAX starts, and only if the CPU will be the backend, makes the CPU
  process settings of `vqjax.xla_cpu.configure` with the `(devices,
  batch_sizes)` that `cpu_devices()` returns once the flags are parsed
  (default: one CPU device); then joins a multi-host run with the arguments
  `distributed()` returns (see `init_distributed`).
  """

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO.
    try:
      done = xla_cpu.configure(*cpu_devices())
      if done["devices"]:
        logging.info("CPU backend: %d data-parallel device(s).", done["devices"])
      init_distributed(**distributed())
      main()
    except guard.Preempted as e:  # Saved; 128 + signal, as a shell reports it.
      logging.flush()
      print(str(e), file=sys.stderr, flush=True)
      sys.exit(e.exit_status)
    except USER_ERRORS as e:
      logging.flush()
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(_main, flags_parser=parse_flags)


def train_main(train_and_evaluate: Callable[..., object]) -> None:
  """The whole of a training script: `--config` (locked, so a misspelt
  override is an error), `--workdir`, then `train_and_evaluate(config, workdir)`."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Path to a config file, "
                                  "optionally with ':variant'.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and "
                      "images; an existing run there is resumed.")
  flags.DEFINE_integer("cpu_devices", 0, "On the CPU backend, train data-"
                       "parallel over this many devices; 0: one per core "
                       "(dividing the batch size).")
  flags.DEFINE_string("coordinator_address", "", "Multi-host: host:port of "
                      "process 0, which every process can reach.")
  flags.DEFINE_integer("num_processes", 0, "Multi-host: how many processes "
                       "(one per host) train together.")
  flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index, "
                       "0 .. num_processes - 1.")
  flags.mark_flags_as_required(["config", "workdir"])
  f = flags.FLAGS

  def main():
    train_and_evaluate(f.config, f.workdir)

  run(main, lambda: (f.cpu_devices, (f.config.train.batch_size,)),
      lambda: {"coordinator_address": f.coordinator_address,
               "num_processes": f.num_processes, "process_id": f.process_id})
