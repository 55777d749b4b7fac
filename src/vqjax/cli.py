"""What the top-level scripts share: flags, clear one-line errors, devices.

A bad input (a missing or corrupt dataset, a misspelt config key, a workdir
that cannot be used, ...) ends a script with one line on stderr, `error:
<what was wrong>; <what to do>`, and exit status 2, before anything in the
workdir is changed. `--debug` (or any `--verbosity`) also prints the Python
traceback.
"""

from __future__ import annotations

import errno
import logging as python_logging
import os
import re
import sys
import traceback
from collections.abc import Callable

from absl import app, flags, logging

from vqjax import checkpoint, configs, data, xla_cpu
from vqjax.checkpoint import CheckpointError
from vqjax.configs import ConfigError
from vqjax.data import DataError
from vqjax.train import guard

# Errors that mean "the input was wrong", reported in one line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CheckpointError, ConfigError,
                                                DataError, guard.TrainingError)
# OS errors that come from the machine, not from vqjax: also one line.
ENVIRONMENT_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
    errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.ENAMETOOLONG, errno.EFBIG})
EXIT_BAD_INPUT = 2

flags.DEFINE_bool("debug", False, "On an error, print its Python traceback "
                  "as well as the one-line message.")


def _verbose(argv: list[str] | None = None) -> bool:
  """Whether errors show their traceback: `--debug` or any `--verbosity`."""
  if argv is not None:
    return any(a in ("--debug", "--debug=true", "--debug=True") or
               a.startswith(("--verbosity", "-v=")) for a in argv)
  return bool(flags.FLAGS["debug"].value) or flags.FLAGS["verbosity"].present


def fail(message: str, verbose: bool = False) -> None:
  """Prints `error: <message>` as one line (after the traceback of the
  exception being handled, if `verbose`) and exits with status 2."""
  logging.flush()
  if verbose and sys.exc_info()[0] is not None:
    traceback.print_exc()
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr,
        flush=True)
  sys.exit(EXIT_BAD_INPUT)


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


def _one_line(error: BaseException | str) -> str:
  text = " ".join(str(error).replace("\\n", " ").split())
  if isinstance(error, KeyError):  # str(KeyError('x')) is "'x'"
    text = text.strip("'\"")
  return text


def _config_path(argv: list[str]) -> str:
  return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
              "?")


def _config_value(dotted: str):
  """The loaded config's value at `dotted` ('train.batch_size'), or None."""
  try:
    value = flags.FLAGS["config"].value
    for key in dotted.split("."):
      value = value[key]
    return value
  except Exception:  # pylint: disable=broad-except
    return None


_EXPECTED = (("invalid literal for int()", "an integer"),
             ("could not convert string to float", "a number"),
             ("Non-boolean argument", "true or false"),
             ("as a ConfigDict", "a group of keys, not one value"))


def _flag_message(message: str) -> str:
  """One line for an absl flag error; for a `--config.x=value` of the wrong
  type, which type the key wants and an example."""
  if "Traceback" in message:  # keep the flag and the config file's own error
    flag = message.split(":", 1)[0]
    return f"{flag}: {message.strip().splitlines()[-1]}"
  match = re.match(r"flag (--([\w.]+))=(.*?): (.*)$", message, re.DOTALL)
  if not match:
    return message
  flag, key, value, why = match.groups()
  expected = next((e for k, e in _EXPECTED if k in why), None)
  if expected is None:
    return message
  if not key.startswith("config."):
    return f"{flag}={value}: {flag} takes {expected}."
  key = key[len("config."):]
  default = _config_value(key)
  if isinstance(default, (bool, int, float, str)) and not (
      expected.startswith("a group")):
    example = str(default).lower() if isinstance(default, bool) else default
    hint = f"; pass e.g. {flag}={example} (the config's value)"
  elif expected.startswith("a group"):
    hint = f"; set one of its keys, e.g. {flag}.<key>=<value>"
  else:
    hint = ""
  return f"{flag}={value}: config.{key} takes {expected}{hint}."


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config mistakes (a misspelt `--config.a.b`, a bad
  config file or value) reported in one line instead of a traceback."""
  verbose = _verbose(argv)
  absl_logger = python_logging.getLogger("absl")
  # Loading the config file may log (a get_config() that returns None does):
  # its error line below says it all.
  absl_logger.disabled = not verbose
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
      flags.FLAGS.config.keys()  # config_flags defers load errors to first use
    return rest
  except flags.IllegalFlagValueError as e:
    if "--config must have a value" in str(e) and _config_path(argv) != "?":
      fail(f"--config={_config_path(argv)}: its get_config() returned None; "
           "it must return an ml_collections.ConfigDict.", verbose)
    fail(_one_line(_flag_message(str(e))), verbose)
  except OSError as e:
    path = _config_path(argv)
    why = ("no such file" if not os.path.exists(path.split(":")[0])
           else _one_line(e))
    fail(f"cannot load --config={path}: {why}; pass the path of a config "
         "file such as configs/mnist_vqvae.py.", verbose)
  except flags.Error as e:
    fail(_one_line(_flag_message(str(e))), verbose)
  except (AttributeError, KeyError) as e:
    if "get_config" in str(e):
      fail(f"--config={_config_path(argv)} defines no get_config(); a config "
           "file must define get_config() returning an "
           "ml_collections.ConfigDict, as configs/mnist_vqvae.py does.",
           verbose)
    # ml_collections raises these for an override of a key that is not there.
    match = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', str(e))
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    wrong = match.group(2) if match else _one_line(e).split()[0].strip("'\"")
    culprit = next((o for o in overrides if f".{wrong}." in o + "."),
                   "a --config override")
    hint = f' (did you mean "{match.group(1)}"?)' if match else ""
    fail(f"{culprit} names no key of the config{hint}; config keys cannot be "
         "added from the command line.", verbose)
  except Exception as e:  # pylint: disable=broad-except
    # The config file itself failed to run.
    fail(f"cannot load --config={_config_path(argv)}: {type(e).__name__}: "
         f"{_one_line(e)}; fix the config file.", verbose)
  finally:
    absl_logger.disabled = False
  return []  # not reached: fail() exits


class _ErrorLineFormatter(python_logging.Formatter):
  """absl log records as `warning: <message>`, without tracebacks."""

  def format(self, record: python_logging.LogRecord) -> str:
    return f"{record.levelname.lower()}: {record.getMessage()}"


class _DropOrbaxRecords(python_logging.Filter):
  """Drops Orbax's own log records: its errors (with tracebacks) reach vqjax
  as exceptions, reported in one line, and its warnings are about its own
  workings (such as a save that waited on the previous one for over 1 s).
  Also asyncio's "Task exception was never retrieved" for the other reads
  of a checkpoint Orbax gave up on."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return (f"{os.sep}orbax{os.sep}" not in record.pathname
            and record.name != "asyncio")


def _quiet_unraisable(hook):
  """TensorStore's callbacks into an asyncio loop Orbax has closed (after a
  failed read or write) are reported as unraisable 'Event loop is closed'
  errors: noise once the failure itself has been reported."""

  def quiet(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and "Event loop is closed" in str(unraisable.exc_value)):
      hook(unraisable)

  return quiet


def quiet_logging() -> None:
  """Without `--verbosity`: vqjax's warnings and errors only, as one
  `warning: ...` line each, and no library tracebacks."""
  logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO.
  handler = logging.get_absl_handler()
  handler.setFormatter(_ErrorLineFormatter())
  handler.addFilter(_DropOrbaxRecords())
  sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)


def environment_error(error: OSError) -> str | None:
  """The one line for an OS error that the machine caused (a full disk, a
  folder that cannot be written), or None for any other."""
  if error.errno not in ENVIRONMENT_ERRNOS:
    return None
  where = f" {error.filename}" if error.filename else ""
  todo = ("free space (or raise the quota) and rerun"
          if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
          else "pass a path that exists and that you can write to")
  return f"cannot use{where}: {error.strerror}; {todo}."


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
    verbose = _verbose()
    if not flags.FLAGS["verbosity"].present:
      quiet_logging()
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
      fail(str(e), verbose)
    except OSError as e:
      line = environment_error(e)
      if line is None:
        raise
      fail(line, verbose)

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
    check_before_training(f.config, f.workdir)
    train_and_evaluate(f.config, f.workdir)

  run(main, lambda: (f.cpu_devices, (f.config.train.batch_size,)),
      lambda: {"coordinator_address": f.coordinator_address,
               "num_processes": f.num_processes, "process_id": f.process_id})


def check_before_training(config, workdir: str) -> None:
  """What can be checked of a training command before any data is read or
  anything written: values that cannot work, a workdir that cannot be
  written or holds another kind of run, an image size the model cannot
  take (where the dataset's size is known without reading it)."""
  configs.check_values(config)
  checkpoint.check_writable(workdir)
  checkpoint.check_resumable(workdir, config)
  shape = data.known_image_shape(config.get("data") or {})
  if shape is not None:
    configs.check_image_fits(config, shape)
