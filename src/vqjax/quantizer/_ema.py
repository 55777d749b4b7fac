"""EMA codebooks, dead-code restarts and k-means initialisation.

`ema_codebook(decay, epsilon, dead_code_threshold)` is the recommended entry
point: like an optax transformation it closes over its settings and returns
pure `init`/`update` functions, so the decay that drives the averages is the
decay that judges codes dead. `ema_init`, `ema_update`, `restart_dead_codes`
and `ema_cluster_size` are the older building blocks (each takes the settings
again, which is how `ema_update(decay=0.9)` followed by `restart_dead_codes`
at its default decay 0.99 could miss dead codes).

References:
  van den Oord et al. 2017, arXiv:1711.00937, appendix A.1 (EMA updates);
  Sonnet/Haiku `VectorQuantizerEMA` (zero-debiased averages, Laplace
  smoothing); Dhariwal et al. Jukebox, 2020, arXiv:2005.00341 (restarting
  dead codes from encoder outputs); Yu et al. 2022, arXiv:2110.04627
  (codes on the unit sphere).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from vqjax.quantizer import _common as C
from vqjax.quantizer._vq import (EMAState, _sum_by_code, l2_normalize,
                                 nearest_code)


def ema_init(codebook: jax.Array) -> EMAState:
  """EMA state for an initial codebook [K, D]: zero averages, zero count."""
  codebook = jnp.asarray(codebook)
  if codebook.ndim != 2 or codebook.shape[0] < 1:
    raise ValueError(f"ema_init: codebook must be [K, D]; got shape "
                     f"{codebook.shape}.")
  C.check_floating("ema_init", "codebook", codebook)
  codebook = codebook.astype(jnp.float32)
  return EMAState(codebook=codebook,
                  cluster_size=jnp.zeros(codebook.shape[:1], jnp.float32),
                  embed_sum=jnp.zeros_like(codebook),
                  count=jnp.zeros((), jnp.int32))


def _check_state(fn: str, state: EMAState) -> None:
  if not isinstance(state, EMAState):
    raise ValueError(f"{fn}: state must be an EMAState (from ema_init or "
                     f"ema_codebook(...).init); got {type(state).__name__}.")
  shape = jnp.shape(state.codebook)
  if len(shape) != 2:
    raise ValueError(f"{fn}: state.codebook must be [K, D]; got shape {shape}.")


def _check_decay(fn: str, decay) -> None:
  C.check_range(fn, "decay", decay, low=0.0, high=1.0, high_open=True)


def _debiased(hidden: jax.Array, decay: float, count: jax.Array) -> jax.Array:
  return hidden / (1.0 - jnp.power(jnp.float32(decay), count.astype(jnp.float32)))


def ema_cluster_size(state: EMAState, decay: float) -> jax.Array:
  """Zero-debiased EMA usage of each code: [K]. Zero before the first update.

  `decay` must be the decay of the updates (`ema_codebook(...).cluster_size`
  reads it from the settings instead).
  """
  _check_decay("ema_cluster_size", decay)
  return jnp.where(state.count > 0, _debiased(state.cluster_size, decay,
                                              jnp.maximum(state.count, 1)), 0.0)


def _ema_step(fn: str, state: EMAState, z: jax.Array, indices: jax.Array,
              decay: float, epsilon: float, axis_name: str | None,
              cosine: bool) -> tuple[EMAState, jax.Array]:
  """`ema_update` that also returns the global counts [K] of the batch."""
  _check_state(fn, state)
  C.check_vectors(fn, "z", z)
  C.check_codebook(fn, state.codebook, z, name="state.codebook")
  C.check_indices(fn, indices, jnp.shape(z)[:-1])
  _check_decay(fn, decay)
  C.check_range(fn, "epsilon", epsilon, low=0.0, low_open=True)
  C.check_axis_name(fn, axis_name)
  num_codes, dim = state.codebook.shape
  z = lax.stop_gradient(jnp.asarray(z)).reshape(-1, dim).astype(jnp.float32)
  if cosine:
    z = l2_normalize(z)
  counts = _sum_by_code(jnp.ones(z.shape[:1], jnp.float32), indices,
                        num_codes)
  sums = _sum_by_code(z, indices, num_codes)
  if axis_name is not None:
    counts, sums = lax.psum((counts, sums), axis_name)

  count = state.count + 1
  cluster_size = decay * state.cluster_size + (1.0 - decay) * counts
  embed_sum = decay * state.embed_sum + (1.0 - decay) * sums
  debiased_size = _debiased(cluster_size, decay, count)
  debiased_sum = _debiased(embed_sum, decay, count)
  total = jnp.sum(debiased_size)
  smoothed = (debiased_size + epsilon) / (total + num_codes * epsilon) * total
  codebook = debiased_sum / smoothed[:, None]
  if cosine:
    # The EMA mean projected back onto the sphere; a code with no mass at all
    # (never assigned) keeps its previous unit vector instead of becoming 0.
    has_mass = jnp.sum(jnp.abs(debiased_sum), axis=-1, keepdims=True) > 0
    codebook = jnp.where(has_mass, l2_normalize(codebook), state.codebook)
  return EMAState(codebook=codebook, cluster_size=cluster_size,
                  embed_sum=embed_sum, count=count), counts


def ema_update(state: EMAState, z: jax.Array, indices: jax.Array,
               decay: float = 0.99, epsilon: float = 1e-5,
               axis_name: str | None = None) -> EMAState:
  """One EMA codebook step with Sonnet/Haiku `VectorQuantizerEMA` semantics.

  `n_k` and `sum_k` (counts and sums of the vectors assigned to code k over the
  global batch) enter zero-debiased moving averages; the cluster sizes are
  Laplace-smoothed, `(N_k + eps) / (N + K eps) * N`, so an unused code never
  divides by zero; the new codebook is `EMA(sum_k) / smoothed(EMA(n_k))`.
  Prefer `ema_codebook(decay, epsilon, ...).update`, which keeps the settings
  with the state.

  Args:
    state: current EMAState.
    z: [..., D] encoder outputs (the gradient is stopped).
    indices: [...] int codes assigned to `z`, shape `z.shape[:-1]`.
    decay: EMA decay in [0, 1).
    epsilon: Laplace smoothing constant, > 0.
    axis_name: if given, counts and sums are `psum`'d over this axis.

  Returns:
    The updated EMAState.

  Raises:
    ValueError: at trace time, if `state.codebook` is not [K, D] with D =
      `z.shape[-1]`, `indices` is not an integer array of shape
      `z.shape[:-1]`, or a known `decay`/`epsilon` is out of range.
  """
  return _ema_step("ema_update", state, z, indices, decay, epsilon, axis_name,
                   cosine=False)[0]


def _gather_global(z: jax.Array, axis_name: str | None) -> jax.Array:
  """[N_local, D] -> [N_global, D], the same on every device."""
  if axis_name is None:
    return z
  return lax.all_gather(z, axis_name, tiled=True)


def _draw_global(z: jax.Array, key: jax.Array, num: int,
                 axis_name: str | None) -> jax.Array:
  """`num` rows drawn uniformly, with replacement, from the global batch.

  `[N_local, D] -> [num, D]`, the same on every device: exactly the rows
  `all_gather(z)[picks]` for global picks drawn with `key`, but each device
  contributes only the rows it holds to a `psum` of `[num, D]` instead of
  gathering the whole batch (which on CPU costs a separate synchronisation of
  all devices mid-step; the `psum` joins the step's other all-reduces).
  """
  n_local = z.shape[0]
  if axis_name is None:
    return z[jax.random.randint(key, (num,), 0, n_local)]
  num_devices = lax.psum(1, axis_name)
  picks = jax.random.randint(key, (num,), 0, n_local * num_devices)
  held_here = picks // n_local == lax.axis_index(axis_name)
  rows = jnp.where(held_here[:, None], z[picks % n_local], 0.0)
  return lax.psum(rows, axis_name)


def _restart(fn: str, state: EMAState, z: jax.Array, key: jax.Array,
             threshold: float, decay: float, axis_name: str | None,
             cosine: bool) -> tuple[EMAState, jax.Array]:
  _check_state(fn, state)
  C.check_vectors(fn, "z", z)
  C.check_codebook(fn, state.codebook, z, name="state.codebook")
  C.check_range(fn, "threshold", threshold, low=0.0)
  _check_decay(fn, decay)
  C.check_axis_name(fn, axis_name)
  num_codes, dim = state.codebook.shape
  z = lax.stop_gradient(jnp.asarray(z)).reshape(-1, dim).astype(jnp.float32)
  if cosine:
    z = l2_normalize(z)
  usage = ema_cluster_size(state, decay)
  dead = (usage < threshold) & (state.count > 0)
  fresh = _draw_global(z, key, num_codes, axis_name)
  codebook = jnp.where(dead[:, None], fresh, state.codebook)
  # Store biased values whose debiased reading is `threshold` (and its sum).
  bias = 1.0 - jnp.power(jnp.float32(decay),
                         jnp.maximum(state.count, 1).astype(jnp.float32))
  cluster_size = jnp.where(dead, threshold * bias, state.cluster_size)
  embed_sum = jnp.where(dead[:, None], fresh * threshold * bias,
                        state.embed_sum)
  return state._replace(codebook=codebook, cluster_size=cluster_size,
                        embed_sum=embed_sum), dead


def restart_dead_codes(state: EMAState, z: jax.Array, key: jax.Array,
                       threshold: float = 1.0, decay: float = 0.99,
                       axis_name: str | None = None) -> tuple[EMAState, jax.Array]:
  """Re-seeds codes whose EMA usage fell below `threshold` from encoder outputs.

  Each dead code becomes a vector drawn uniformly (with replacement) from the
  global batch `z`; its EMA statistics restart as if it had been assigned that
  vector `threshold` times, so it is not declared dead again at once. `key` must
  be the same on every device; with `axis_name` every device makes the same
  choice from the global batch (see `_draw_global`). Nothing happens before
  the first EMA update (`state.count == 0`). `decay` must be the decay of the
  updates; `ema_codebook(...).update` restarts with its own decay.

  Args:
    state: EMAState after `ema_update`.
    z: [..., D] encoder outputs of the current (local) batch.
    key: PRNG key, identical across devices.
    threshold: codes with debiased EMA usage below this are dead (>= 0).
    decay: the EMA decay used by `ema_update` (for debiasing).
    axis_name: data-parallel axis, if any.

  Returns:
    (new state, [K] bool mask of the codes that were restarted).

  References:
    Dhariwal et al. Jukebox. 2020, arXiv:2005.00341, section 3.2 (random
    restarts of unused codes).
  """
  return _restart("restart_dead_codes", state, z, key, threshold, decay,
                  axis_name, cosine=False)


@C.keyed
class EMAInfo(NamedTuple):
  """What `EMACodebook.update` reports besides the new state.

  Attributes:
    counts: [K] float32 uses of each code in this (global) batch.
    restarted: [K] bool, the codes re-seeded at this step.
    num_restarted: [] float32, how many.
    cluster_size: [K] float32 debiased EMA usage after the step (a restarted
      code reads `dead_code_threshold`).
  """
  counts: jax.Array
  restarted: jax.Array
  num_restarted: jax.Array
  cluster_size: jax.Array


class EMACodebook(NamedTuple):
  """An EMA codebook's pure functions with its settings (see `ema_codebook`).

  Attributes:
    init: `init(codebook [K, D]) -> EMAState`.
    update: `update(state, z [..., D], indices [...], key=None,
      axis_name=None) -> (EMAState, EMAInfo)`.
    cluster_size: `cluster_size(state) -> [K]` debiased EMA usage.
    decay, epsilon, dead_code_threshold, cosine: the settings.
  """
  init: Callable[[jax.Array], EMAState]
  update: Callable[..., tuple[EMAState, EMAInfo]]
  cluster_size: Callable[[EMAState], jax.Array]
  decay: float
  epsilon: float
  dead_code_threshold: float
  cosine: bool


def _setting(fn: str, name: str, value, **bounds) -> float:
  number = C.concrete_float(value)
  if number is None or jnp.ndim(value) != 0:
    raise ValueError(f"{fn}: {name} must be a Python number (a setting, fixed "
                     f"when the codebook is made); got {value!r}.")
  C.check_range(fn, name, number, **bounds)
  return number


def ema_codebook(decay: float = 0.99, epsilon: float = 1e-5,
                 dead_code_threshold: float = 0.0,
                 cosine: bool = False) -> EMACodebook:
  """An EMA codebook whose settings live with it, as optax keeps them.

    ema = ema_codebook(decay=0.99, dead_code_threshold=1.0)
    state = ema.init(codebook)                                   # EMAState
    indices = nearest_code(z, state.codebook)
    state, info = ema.update(state, z, indices, key=key, axis_name="batch")

  `update` is one `ema_update` step (Sonnet semantics, see there) followed,
  when `dead_code_threshold > 0`, by `restart_dead_codes` with the same decay
  (which then needs `key`, identical on every device). With `cosine=True` the
  codebook lives on the unit sphere (ViT-VQGAN): `init` normalises the
  codes, `update` averages l2-normalised inputs and normalises the EMA mean
  (a code never assigned keeps its unit vector), and restarts draw
  normalised inputs; look codes up with `cosine_nearest_code` (or
  `quantize(..., cosine=True)`).

  Everything `update` computes over the batch is summed over `axis_name` when
  given, so N devices produce the state one device would on the global batch.

  Args:
    decay: EMA decay in [0, 1).
    epsilon: Laplace smoothing constant, > 0.
    dead_code_threshold: codes whose debiased EMA usage (vectors per step)
      falls below this are restarted; 0 disables restarts.
    cosine: keep the codes on the unit sphere.

  Returns:
    EMACodebook(init, update, cluster_size, decay, epsilon,
    dead_code_threshold, cosine).

  References:
    Sonnet `VectorQuantizerEMA`; van den Oord et al. 2017, arXiv:1711.00937,
    appendix A.1; Dhariwal et al. 2020, arXiv:2005.00341; Yu et al. 2022,
    arXiv:2110.04627.
  """
  fn = "ema_codebook"
  decay = _setting(fn, "decay", decay, low=0.0, high=1.0, high_open=True)
  epsilon = _setting(fn, "epsilon", epsilon, low=0.0, low_open=True)
  threshold = _setting(fn, "dead_code_threshold", dead_code_threshold, low=0.0)
  cosine = bool(cosine)

  def init(codebook: jax.Array) -> EMAState:
    state = ema_init(codebook)
    if cosine:
      state = state._replace(codebook=l2_normalize(state.codebook))
    return state

  def cluster_size(state: EMAState) -> jax.Array:
    return ema_cluster_size(state, decay)

  def update(state: EMAState, z: jax.Array, indices: jax.Array,
             key: jax.Array | None = None,
             axis_name: str | None = None) -> tuple[EMAState, EMAInfo]:
    name = "ema_codebook(...).update"
    if threshold > 0 and key is None:
      raise ValueError(
          f"{name}: this codebook restarts dead codes (dead_code_threshold="
          f"{threshold}), so update needs key=... (the same PRNG key on every "
          "device).")
    state, counts = _ema_step(name, state, z, indices, decay, epsilon,
                              axis_name, cosine)
    if threshold > 0:
      state, dead = _restart(name, state, z, key, threshold, decay, axis_name,
                             cosine)
    else:
      dead = jnp.zeros(counts.shape, bool)
    return state, EMAInfo(counts=counts, restarted=dead,
                          num_restarted=jnp.sum(dead.astype(jnp.float32)),
                          cluster_size=ema_cluster_size(state, decay))

  return EMACodebook(init=init, update=update, cluster_size=cluster_size,
                     decay=decay, epsilon=epsilon,
                     dead_code_threshold=threshold, cosine=cosine)


def kmeans(z: jax.Array, num_codes: int, key: jax.Array, num_iters: int = 10,
           axis_name: str | None = None, *, cosine: bool = False,
           init: jax.Array | None = None) -> jax.Array:
  """Lloyd's k-means on a batch of vectors, for initialising a codebook.

  Centres start at distinct random vectors of the (global) batch, or at
  `init`; a centre that loses all its points keeps its previous position.
  Every device gathers the global batch and runs the same iterations, so the
  centres are those one device computes on the global batch, identical on
  every device.

  Args:
    z: [..., D] vectors (local batch; gathered over `axis_name` if given).
    num_codes: K >= 1.
    key: PRNG key, identical across devices.
    num_iters: Lloyd iterations.
    axis_name: data-parallel axis, if any.
    cosine: spherical k-means (for a cosine codebook): the vectors are
      l2-normalised, assignments use cosine similarity and each centre is its
      points' normalised mean.
    init: optional [K, D] starting centres (e.g. k-means++ seeds), identical
      across devices; `key` is then unused.

  Returns:
    [K, D] float32 centres.

  References:
    Lloyd. Least squares quantization in PCM. IEEE Trans. Inf. Theory 1982;
    Dhillon & Modha. Concept decompositions for large sparse text data using
    clustering. Machine Learning 2001 (spherical k-means).
  """
  fn = "kmeans"
  C.check_vectors(fn, "z", z)
  if isinstance(num_codes, bool) or int(num_codes) != num_codes \
      or num_codes < 1:
    raise ValueError(f"{fn}: num_codes must be a positive int; got "
                     f"{num_codes!r}.")
  if int(num_iters) != num_iters or num_iters < 0:
    raise ValueError(f"{fn}: num_iters must be an int >= 0; got "
                     f"{num_iters!r}.")
  C.check_axis_name(fn, axis_name)
  num_codes = int(num_codes)
  dim = z.shape[-1]
  z = _gather_global(jnp.asarray(z).reshape(-1, dim).astype(jnp.float32),
                     axis_name)
  if cosine:
    z = l2_normalize(z)
  n = z.shape[0]
  if init is None:
    picks = jax.random.choice(key, n, (num_codes,), replace=n < num_codes)
    centres = z[picks]
  else:
    if init.shape != (num_codes, dim):
      raise ValueError(f"{fn}: init must be [num_codes, D] = "
                       f"{[num_codes, dim]}; got {list(init.shape)}.")
    centres = jnp.asarray(init, jnp.float32)
    if cosine:
      centres = l2_normalize(centres)

  def step(_, centres):
    assign = nearest_code(z, centres)
    counts = _sum_by_code(jnp.ones((n,), jnp.float32), assign, num_codes)
    sums = _sum_by_code(z, assign, num_codes)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    if cosine:
      means = l2_normalize(means)
    return jnp.where(counts[:, None] > 0, means, centres)

  return lax.fori_loop(0, int(num_iters), step, centres)
