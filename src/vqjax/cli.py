"""What the top-level scripts share: flags, clear one-line errors, devices."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import app, flags, logging

from vqjax.checkpoint import CheckpointError

# Errors that mean "the input was wrong", reported in one line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CheckpointError, ValueError,
                                                FileNotFoundError)


def init_distributed() -> None:
  """Joins a multi-host run when the launcher set one up (no-op otherwise)."""
  import jax  # pylint: disable=g-import-not-at-top
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get(
      "VQJAX_DISTRIBUTED"):
    jax.distributed.initialize()


def run(main: Callable[[], None]) -> None:
  """`app.run` with user errors printed as one line and exit status 2."""

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO.
    try:
      init_distributed()
      main()
    except USER_ERRORS as e:
      logging.flush()
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(_main)


