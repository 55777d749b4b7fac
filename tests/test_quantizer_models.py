"""The quantizer variants inside the models: by config, through the Linen
modules (equal to the functional quantizer), in the stage-1 trainer, and as
codes for the prior, `sample.py`'s modes and `evaluate.py`'s bound."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REPO, load_config
from vqjax import data, generate, parallel, runs
from vqjax import quantizer as vq
from vqjax.configs import ConfigError
from vqjax.evaluation import likelihood_bound
from vqjax.models import VQVAE, build
from vqjax.models.conditioning import TopCodeConditioner
from vqjax.models.quantizers import FSQuantizer, LFQuantizer
from vqjax.models.vector_quantizer import EMA_COLLECTION, VectorQuantizer
from vqjax.train import prior as prior_lib
from vqjax.train import stage1 as stage1_lib

# Each variant of the list on the tiny config (K=32, D=8).
VARIANTS = {
    "plain": dict(use_ema=False, dead_code_threshold=0.0),
    "rotation": dict(gradient="rotation"),
    "cosine_lookup": dict(cosine=True, lookup_dim=4, kmeans_init=True,
                          kmeans_iters=2),
    "fsq": dict(kind="fsq", levels=(4, 3, 3)),
    "lfq": dict(kind="lfq", num_codes=16),
    "residual": dict(depth=2, dropout=0.5, kmeans_init=True, kmeans_iters=2),
    "grouped": dict(groups=2, use_ema=False, dead_code_threshold=0.0),
}
CHANNELS = {"residual": 2, "grouped": 2}
CODES = {"fsq": 36, "lfq": 16}


def _config(name, variant, **changes):
  config = load_config(name, "tiny")
  config.model.kernels = "xla"  # Compiles faster than the Winograd layers.
  for key, value in {**VARIANTS[variant], **changes}.items():
    config.quantizer[key] = value
  return config


def random_variables(model, x, seed=0):
  """Variables in the shapes `model.init` gives, drawn with NumPy: a jitted
  `init` with its random initializers takes seconds to compile on XLA:CPU."""
  key = jax.random.key(0)
  shapes = jax.eval_shape(model.init, {"params": key, "sample": key}, x)
  rng = np.random.default_rng(seed)

  def leaf(path, shape):
    name = jax.tree_util.keystr(path)
    if EMA_COLLECTION in name and "codebook" not in name or "bias" in name:
      return jnp.zeros(shape.shape, shape.dtype)
    value = rng.standard_normal(shape.shape).astype(np.float32)
    return jnp.asarray(value / np.sqrt(np.prod(shape.shape[:-1]))
                       if "kernel" in name else value)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture
def fast_init(monkeypatch):
  monkeypatch.setattr(stage1_lib.Stage1Task, "init_variables",
                      lambda task, rng, x: random_variables(task.host_model,
                                                            x))


def _steps(task, batches):
  """`task.initialize` (if any) and a train step per batch, on one device."""
  pmap = lambda f: jax.pmap(f, axis_name=parallel.AXIS,  # noqa: E731
                            devices=jax.devices()[:1])
  lead = lambda b: jax.tree.map(lambda x: x[None], b)  # noqa: E731
  state = task.create_train_state(jax.random.PRNGKey(0),
                                  {k: v[:1] for k, v in batches[0].items()})
  initial = state
  state = parallel.replicate(state)
  if task.has_initialize:
    state = pmap(task.initialize)(state, lead(batches[0]))
  step = pmap(task.train_step)
  metrics = []
  for batch in batches:
    state, m = step(state, lead(batch))
    metrics.append(parallel.unreplicate(m))
  return initial, parallel.unreplicate(state), metrics


STAGE1_CASES = [("mnist_vqvae", v) for v in VARIANTS] + [
    ("mnist_vqvae2", "residual")]


@pytest.mark.parametrize("name,variant", STAGE1_CASES)
def test_stage1_trainer_trains_every_quantizer_variant(name, variant,
                                                       mnist_dir, fast_init):
  """Two train steps (after k-means where configured), the eval step, and
  the code grid `[B, h, w, C]` that decodes to the reconstruction."""
  config = _config(name, variant)
  two_levels = name == "mnist_vqvae2"
  if two_levels:
    config.quantizer.kmeans_init = False
  task = stage1_lib.Stage1Task(config)
  batches = data.train_batches(task.train_data, 16, 0)
  initial, state, metrics = _steps(task, [next(batches), next(batches)])
  k, c = CODES.get(variant, 32), CHANNELS.get(variant, 1)
  assert task.model.codebook_size == k and task.model.code_channels == c
  suffixes = ("_top", "_bottom") if two_levels else ("",)
  for m in metrics:
    for key, value in m.items():
      assert np.all(np.isfinite(value)), (variant, key)
    for suffix in suffixes:
      assert 1.0 <= m["perplexity" + suffix] <= k + 1e-3
      assert 0.0 < m["codes_used" + suffix] <= 1.0
  if variant == "lfq":
    assert metrics[0]["codebook_entropy"] > 0
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       initial.params, state.params)
  assert max(jax.tree_util.tree_leaves(moved)) > 0
  if config.quantizer.kmeans_init:  # The EMA codebook left its random init.
    before = initial.model_state[EMA_COLLECTION]["quantizer"]["codebook"]
    after = state.model_state[EMA_COLLECTION]["quantizer"]["codebook"]
    assert before.shape == after.shape and not np.allclose(before, after)

  # The test metrics: the eval step on one padded batch of the test split.
  images = task.test_data.batch(np.arange(8))["image"]
  batch = {"image": images, "mask": np.array([1.0] * 6 + [0.0] * 2,
                                             np.float32)}
  sums = jax.pmap(task.eval_step, axis_name=parallel.AXIS,
                  devices=jax.devices()[:1])(
                      parallel.replicate(state),
                      jax.tree.map(lambda x: x[None], batch))
  summary = task.summarize_eval(parallel.unreplicate(sums))
  assert np.isfinite(summary["bits_per_dim"]) and summary["nmse"] > 0
  for suffix in suffixes:
    assert 1.0 <= summary["perplexity" + suffix] <= k + 1e-3

  model = task.host_model

  @jax.jit
  def round_trip(variables, x):
    codes = model.apply(variables, x, method=type(model).encode_to_indices)
    grids = (codes["top"], codes["bottom"]) if two_levels else (codes,)
    decoded = model.apply(variables, *grids,
                          method=type(model).decode_indices)
    return grids, decoded, model.apply(variables, x)["reconstruction"]

  grids, decoded, reconstruction = round_trip(
      state.variables(), stage1_lib.to_float(images))
  for grid, h in zip(grids, (7, 14)):
    assert grid.shape == (8, h, h, c) and grid.dtype == jnp.int32
    assert 0 <= int(grid.min()) and int(grid.max()) < k
  np.testing.assert_allclose(decoded, reconstruction, atol=1e-5)


OLD_KEYS = ("kind", "gradient", "cosine", "lookup_dim", "depth", "groups",
            "levels", "dropout", "shared_codebook", "entropy_weight",
            "entropy_temperature")


@pytest.mark.parametrize("saved_before", [False, True],
                         ids=["current_config", "config_of_an_older_run"])
def test_default_config_keeps_the_parameter_tree_of_earlier_runs(
    saved_before):
  """Checkpoints written before the quantizer variants restore: the default
  quantizer (kind=vq, depth=1, groups=1, lookup_dim=0) keeps the tree, and
  an older run's config (without the new keys) builds that model."""
  with open(os.path.join(REPO, "tests", "golden",
                         "stage1_param_trees.json")) as f:
    golden = json.load(f)
  for key, expected in golden.items():
    name, ema = key.split(":")
    config = load_config(name, "tiny")
    config.quantizer.use_ema = ema == "True"
    if ema != "True":
      config.quantizer.dead_code_threshold = 0.0
    if saved_before:  # As `runs.restore_stage1` reads an older config.json.
      saved = json.loads(config.to_json())
      for old in OLD_KEYS:
        del saved["quantizer"][old]
      config = ml_collections.ConfigDict(saved)
      runs._with_quantizer_defaults(config)  # pylint: disable=protected-access
    model = build.stage1(config, 1)
    assert model.codebook_size == 32 and model.code_channels == 1
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((2, 28, 28, 1)))
    found = {jax.tree_util.keystr(path): list(x.shape)
             for path, x in jax.tree_util.tree_leaves_with_path(shapes)}
    assert found == expected, key


def _params(variables):
  return variables.get("params", {})


def _dense(params, name, x):
  return x @ params[name]["kernel"] + params[name]["bias"]


@pytest.mark.parametrize("fields", [
    dict(use_ema=False),
    dict(use_ema=False, gradient="rotation"),
    dict(use_ema=False, cosine=True, lookup_dim=3),
    dict(use_ema=False, depth=3),
    dict(use_ema=False, depth=3, shared_codebook=True),
    dict(use_ema=False, groups=2, cosine=True),
], ids=["vq", "rotation", "cosine_lookup", "residual", "shared", "grouped"])
def test_linen_quantizer_equals_the_functional_quantizer(fields):
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 6))
  module = VectorQuantizer(num_codes=8, code_dim=6, beta=0.3, **fields)
  variables = jax.jit(module.init)(jax.random.PRNGKey(1), z)
  p = _params(variables)
  table = p["codebook"]
  kwargs = dict(gradient=fields.get("gradient", "straight_through"))

  def functional(z):
    h = _dense(p, "project_in", z) if fields.get("lookup_dim") else z
    if fields.get("depth"):
      stack = jnp.broadcast_to(table, (3, 8, 6)) if table.ndim == 2 else table
      q = vq.residual_quantize(h, stack, 0.3, **kwargs)
      return q, jnp.sum(q.codebook_loss), jnp.sum(q.commitment_loss)
    if fields.get("groups"):
      q = vq.grouped_quantize(h, table, 0.3, cosine=True, **kwargs)
      return q, jnp.mean(q.codebook_loss), jnp.mean(q.commitment_loss)
    q = vq.quantize(h, table, 0.3, cosine=fields.get("cosine", False),
                    **kwargs)
    return q, q.codebook_loss, q.commitment_loss

  out = jax.jit(module.apply)(variables, z)
  q, cb, cm = jax.jit(functional)(z)
  quantized = (_dense(p, "project_out", q.quantized)
               if fields.get("lookup_dim") else q.quantized)
  np.testing.assert_allclose(out["quantized"], quantized, atol=1e-6)
  np.testing.assert_array_equal(out["indices"], q.indices)
  np.testing.assert_array_equal(out["counts"], q.counts)
  np.testing.assert_allclose(out["codebook_loss"], cb, rtol=1e-6)
  np.testing.assert_allclose(out["commitment_loss"], cm, rtol=1e-6)
  np.testing.assert_allclose(out["loss"], cb + cm, rtol=1e-6)
  # The gradients reaching the input (and the projection) are the estimator's.
  loss = lambda y: jnp.sum(jnp.sin(y))  # noqa: E731
  g_module = jax.jit(jax.grad(
      lambda z: loss(module.apply(variables, z)["quantized"])))(z)
  g_functional = jax.jit(jax.grad(lambda z: loss(
      _dense(p, "project_out", functional(z)[0].quantized)
      if fields.get("lookup_dim") else functional(z)[0].quantized)))(z)
  np.testing.assert_allclose(g_module, g_functional, atol=1e-6)


@pytest.mark.parametrize("fields", [
    dict(), dict(cosine=True), dict(groups=2), dict(depth=2),
    dict(depth=2, shared_codebook=True),
], ids=["vq", "cosine", "grouped", "residual", "shared"])
def test_linen_ema_update_equals_ema_codebook_update(fields):
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 4))
  module = VectorQuantizer(num_codes=16, code_dim=4, decay=0.9, **fields)
  variables = jax.jit(module.init)(jax.random.PRNGKey(1), z)
  out, new = jax.jit(lambda v, z: module.apply(
      v, z, train=True, mutable=[EMA_COLLECTION]))(variables, z)
  ema = vq.ema_codebook(0.9, 1e-5, cosine=fields.get("cosine", False))

  @jax.jit
  def functional(state, z):
    if fields.get("groups"):
      parts = jnp.moveaxis(z.reshape(4, 3, 3, 2, 2), -2, 0)
      q = vq.grouped_quantize(z, state, 0.25)
      return q, jax.vmap(ema.update)(state, parts,
                                     jnp.moveaxis(q.indices, -1, 0))[0]
    if fields.get("shared_codebook"):
      q = vq.residual_quantize(z, jnp.broadcast_to(state.codebook,
                                                   (2, 16, 4)))
      return q, ema.update(state, q.residuals.reshape(-1, 4),
                           q.indices.reshape(-1))[0]
    if fields.get("depth"):
      q = vq.residual_quantize(z, state)
      return q, jax.vmap(ema.update)(state, q.residuals,
                                     jnp.moveaxis(q.indices, -1, 0))[0]
    q = vq.quantize(z, state, cosine=fields.get("cosine", False))
    return q, ema.update(state, z, q.indices)[0]

  q, expected = functional(vq.EMAState(**variables[EMA_COLLECTION]), z)
  np.testing.assert_array_equal(out["indices"], q.indices)
  for name, value in expected._asdict().items():
    np.testing.assert_allclose(new[EMA_COLLECTION][name], value, atol=1e-6,
                               err_msg=name)


@pytest.mark.parametrize("fields", [
    dict(cosine=True), dict(groups=2), dict(depth=2),
    dict(depth=2, shared_codebook=True),
], ids=["cosine", "grouped", "residual", "shared"])
def test_linen_restarts_dead_codes_from_its_own_inputs(fields):
  """Restarted codes are input vectors of their own codebook: the (unit)
  encoder outputs, a group's slice, or a depth's residual."""
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 2, 4))
  module = VectorQuantizer(num_codes=64, code_dim=4, dead_code_threshold=1.0,
                           **fields)
  variables = jax.jit(module.init)(jax.random.PRNGKey(1), z)
  out, new = jax.jit(lambda v, z: module.apply(
      v, z, train=True, mutable=[EMA_COLLECTION],
      rngs={"restart": jax.random.PRNGKey(2)}))(variables, z)
  codebook = np.asarray(new[EMA_COLLECTION]["codebook"])
  codebook = codebook.reshape((-1,) + codebook.shape[-2:])   # [C', K, d]
  if fields.get("groups"):
    sources = np.moveaxis(np.asarray(z).reshape(8, 2, 2), 1, 0)
  elif fields.get("depth"):
    q = vq.residual_quantize(z, jnp.broadcast_to(
        variables[EMA_COLLECTION]["codebook"], (2, 64, 4)))
    sources = np.asarray(q.residuals).reshape(2, 8, 4)
    if fields.get("shared_codebook"):
      sources = sources.reshape(1, 16, 4)
  else:
    sources = np.asarray(vq.l2_normalize(z)).reshape(1, 8, 4)
  restarted = 0
  for table, rows in zip(codebook, sources):
    distance = np.min(np.sum((table[:, None] - rows[None]) ** 2, -1), axis=1)
    restarted += int(np.sum(distance < 1e-10))
  # At most 8 codes per codebook were used this step; the rest restarted.
  assert float(out["restarted"]) >= codebook.shape[0] * (64 - 16)
  assert restarted >= float(out["restarted"])


def test_residual_dropout_uses_a_prefix_of_depths_and_keeps_dropped_ema():
  module = VectorQuantizer(num_codes=8, code_dim=4, depth=4, dropout=1.0)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 4))
  variables = jax.jit(module.init)(jax.random.PRNGKey(1), z)
  train = jax.jit(lambda key: module.apply(
      variables, z, train=True, mutable=[EMA_COLLECTION],
      rngs={"dropout": key}))
  seen = set()
  for seed in range(6):
    out, new = train(jax.random.PRNGKey(seed))
    active = np.asarray(out["indices"][0, 0, 0] >= 0)
    n = int(active.sum())
    seen.add(n)
    assert active[:n].all() and not active[n:].any()
    count = np.asarray(new[EMA_COLLECTION]["count"])
    np.testing.assert_array_equal(count, active.astype(np.int32))
    np.testing.assert_array_equal(new[EMA_COLLECTION]["codebook"][n:],
                                  variables[EMA_COLLECTION]["codebook"][n:])
  assert len(seen) > 1
  assert (module.apply(variables, z)["indices"] >= 0).all()  # Eval: all depths.


def test_fsq_and_lfq_modules_equal_the_functional_quantizers():
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 4))
  fsq = FSQuantizer(levels=(5, 4, 3, 3), code_dim=4)  # D = d: no projection
  out = jax.jit(fsq.apply)({}, z)
  codes = vq.fsq_quantize(z, (5, 4, 3, 3))
  np.testing.assert_array_equal(out["quantized"], codes)
  np.testing.assert_array_equal(out["indices"],
                                vq.fsq_codes_to_indices(codes, (5, 4, 3, 3)))
  assert float(out["loss"]) == 0.0 and fsq.codebook_size == 180
  lfq = LFQuantizer(num_codes=16, code_dim=4, beta=0.5, entropy_weight=0.2)
  out = jax.jit(lfq.apply)({}, z)
  entropy = jax.jit(vq.lfq_entropy_loss)(z, 0.01)
  np.testing.assert_array_equal(out["quantized"], vq.lfq_quantize(z))
  np.testing.assert_allclose(
      out["loss"], vq.commitment_loss(z, vq.lfq_quantize(z), 0.5)
      + 0.2 * entropy.loss, rtol=1e-6)
  # With D != d both project in and out, and codes decode through the same path.
  fsq = FSQuantizer(levels=(4, 3), code_dim=6)
  z = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 3, 6))
  variables = jax.jit(fsq.init)(jax.random.PRNGKey(2), z)
  out = jax.jit(fsq.apply)(variables, z)
  again = jax.jit(lambda v, c: fsq.apply(v, c, method=FSQuantizer.lookup_codes)
                  )(variables, out["indices"][..., None])
  np.testing.assert_allclose(again, out["quantized"], atol=1e-6)


@pytest.mark.parametrize("variant", ["rotation", "cosine_lookup", "fsq", "lfq",
                                     "residual", "grouped"])
def test_bfloat16_activations_keep_float32_quantizer_outputs(variant):
  config = _config("mnist_vqvae", variant)
  config.model.dtype = "bfloat16"
  model = build.stage1(config, 1)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 28, 28, 1), jnp.bfloat16)
  variables = random_variables(model, x)
  out, state = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=[EMA_COLLECTION],
      rngs={"restart": jax.random.PRNGKey(1),
            "dropout": jax.random.PRNGKey(2)}))(variables, x)
  level = out["levels"]["codes"]
  for key in ("quantized", "codebook_loss", "commitment_loss", "loss",
              "counts", "z_e"):
    assert level[key].dtype == jnp.float32, key
  assert out["reconstruction"].dtype == jnp.float32
  for leaf in jax.tree_util.tree_leaves(state):
    assert leaf.dtype in (jnp.float32, jnp.int32)


@pytest.mark.parametrize("changes,match", [
    (dict(kind="fsq", depth=2), "depth=2 applies to kind='vq' only"),
    (dict(kind="lfq", num_codes=100), "2\\^d"),
    (dict(kind="fsq", levels=(8, 1)), "levels must be"),
    (dict(depth=2, groups=2), "do not combine"),
    (dict(groups=3), "groups=3 must divide"),
    (dict(gradient="rotate"), "gradient must be one of"),
    (dict(dropout=0.5), "needs depth > 1"),
    (dict(shared_codebook=True), "needs depth > 1"),
    (dict(depth=2, cosine=True), "no cosine variant"),
    (dict(kind="vqgan"), "is not one of"),
])
def test_quantizer_settings_that_cannot_work_are_config_errors(changes, match):
  config = load_config("mnist_vqvae", "tiny")
  for key, value in changes.items():
    config.quantizer[key] = value
  with pytest.raises(ConfigError, match=match):
    build.stage1(config, 1)


def test_top_code_conditioner_embeds_every_code_channel():
  module = TopCodeConditioner(num_codes=4, features=3, upsamples=1)
  one = jnp.array([[[[1], [2]], [[3], [0]]]])           # [1, 2, 2, 1]
  variables = module.init(jax.random.PRNGKey(0), one)
  assert variables["params"]["Embed_0"]["embedding"].shape == (4, 3)
  two = jnp.concatenate([one, one], axis=-1)           # [1, 2, 2, 2]
  variables = module.init(jax.random.PRNGKey(0), two)
  assert variables["params"]["Embed_0"]["embedding"].shape == (8, 3)
  swapped = jnp.concatenate([one, (one + 1) % 4], axis=-1)
  assert not np.allclose(module.apply(variables, two),
                         module.apply(variables, swapped))


@pytest.mark.parametrize("variant", ["fsq", "residual"])
def test_prior_trains_samples_and_scores_on_variant_codes(variant, tmp_path,
                                                          mnist_dir, fast_init):
  vqvae_dir, prior_dir = str(tmp_path / "vqvae"), str(tmp_path / "prior")
  config = _config("mnist_vqvae", variant, kmeans_init=False)
  config.train.num_steps = 2
  stage1_lib.train_and_evaluate(config, vqvae_dir)
  prior_config = load_config("mnist_prior", "tiny")
  prior_config.model.kernels = "xla"
  prior_config.vqvae_workdir = vqvae_dir
  prior_config.train.num_steps = 2
  prior_config.eval.every = 2
  prior_config.eval.num_samples = 2
  metrics = prior_lib.train_and_evaluate(prior_config, prior_dir)
  k, c = CODES.get(variant, 32), CHANNELS.get(variant, 1)
  assert metrics["uniform_bits"] == pytest.approx(np.log2(k))
  assert np.isfinite(metrics["bits"])
  assert os.path.exists(os.path.join(prior_dir, "images",
                                     "samples_000002.png"))
  prior = runs.restore_prior(prior_dir)
  assert prior.sample_shape == (7, 7, c) and prior.model.num_channels == c
  assert prior.model.num_values == k
  with np.load(os.path.join(prior_dir, "codes_test.npz")) as cached:
    assert cached["codes"].shape[1:] == (7, 7, c)

  # sample.py's modes and evaluate.py's pieces, in process.
  written = generate.write_all(prior, str(tmp_path / "samples"), num=2)
  names = sorted(os.path.basename(p).split("_step")[0] for p in written)
  assert names == ["codes_near_test", "prior_samples", "random_codes"]
  for mode in ("prior_samples", "random_codes", "codes_near_test"):
    codes = np.load(str(tmp_path / "samples" / f"{mode}_step000002.npy"))
    assert codes.shape == (2, 7, 7, c) and 0 <= codes.min() and codes.max() < k
  bound = likelihood_bound(prior.vqvae, (prior,))
  assert bound["with the PixelCNN prior"] > bound["reconstruction only"]
