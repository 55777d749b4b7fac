"""Train-step throughput and model-FLOP utilisation (MFU) on the local devices.

  export VQJAX_DATA_DIR=/work/shared/data
  python benchmarks/train_throughput.py                 # stage 1, MNIST config
  python benchmarks/train_throughput.py --breakdown     # + per-component costs
  python benchmarks/train_throughput.py --json --repeats 7 --steps 10
  python benchmarks/train_throughput.py --set model.kernels=xla   # Flax's layers

The step is built exactly as training builds it: the task's `train_step`,
mapped over the local devices by `vqjax.parallel.data_parallel` (pmap, state
donated), a replicated train state and a sharded batch of real data. Warm-up
(compilation and the first steps) is excluded; each repeat times `--steps`
consecutive steps ended by `block_until_ready`, and the median repeat is
reported.

FLOPs per step come from XLA's cost analysis of a compiled step (the pmapped
step lowered and compiled for the same shapes; XLA reports the per-device
program, so it is multiplied by the device count). Two counts are reported:

* model FLOPs: the step with every convolution computed directly (the
  `xla_cpu` kernels without Winograd: no multiplications by the zeros of a
  dilated input either), i.e. what the architecture costs;
* executed FLOPs: the step as timed, whose Winograd convolutions
  (`vqjax.xla_cpu.winograd`) do fewer multiplications for the same function.

MFU is model FLOP/s and HFU (hardware FLOP utilisation) executed FLOP/s, both
divided by the dense float32 matmul FLOP/s measured in the same process (median
of `jnp.dot` on 2048 x 2048 matrices, measured before and after the step, the
higher of the two), so all numbers see the same CPU load.

Stages are registered in `STAGES`: a function of the parsed args and the
loaded config returning a `Bench` (pmapped step, its args, global batch size): `--stage 1` is the VQ-VAE
step (configs/mnist_vqvae.py), `--stage 2` the PixelCNN prior step
(configs/mnist_prior.py, on random 7x7 codes with K=512; pass
`--config configs/mnist_pixelcnn.py` for the raw-pixel model).

No XLA flags are set by this script beyond what the training scripts set.
Like them, it first calls `vqjax.xla_cpu.configure` (on the CPU backend only:
freed memory kept mapped, one device per core, one thread per device; set
`VQJAX_DEFAULT_MALLOC=1` to time glibc's default allocator instead, the table
says which was in force; `--cpu-devices 1` for a single device).
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Bench:
  """What the timing loop needs for one training stage.

  Attributes:
    name: printed in the table.
    step_fn: the mapped step `(state, batch) -> (state, metrics)`; its state
      argument is donated, so the loop feeds each output state back in.
    state: the replicated train state.
    batch: the sharded batch `{"image": [D, B / D, H, W, C] uint8, ...}`.
    batch_size: global images per step.
    breakdown: optional `() -> list[dict]` of per-component rows.
    task: the task object behind the step, if any (for experiments).
    model_flops: optional `() -> float`, per-device FLOPs of the same step
      with direct convolutions (default: the executed FLOPs).
  """
  name: str
  step_fn: Callable
  state: Any
  batch: Any
  batch_size: int
  breakdown: Callable[[], list[dict]] | None = None
  task: Any = None
  model_flops: Callable[[], float] | None = None


def load_config(path: str):
  """`get_config(variant)` of a config file: `path[:variant]`."""
  path, _, variant = path.partition(":")
  if not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(_ROOT, path)
  spec = importlib.util.spec_from_file_location("_bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def _median_time(fn: Callable[[], Any], repeats: int, inner: int = 1) -> float:
  """Median over `repeats` of the seconds per call of `fn` (after a warm-up)."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(inner):
      out = fn()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / inner)
  return statistics.median(times)


def compiled_flops(compiled) -> float:
  """FLOPs of one run of a compiled XLA executable (per device)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def matmul_flops_per_s(n: int = 2048, repeats: int = 7) -> float:
  """Dense float32 `[n, n] @ [n, n]` FLOP/s (median), default precision."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  seconds = _median_time(lambda: dot(a, b), repeats, inner=3)
  return 2.0 * n ** 3 / seconds


# ----------------------------------------------------------------- stage 1 --

def _stage1(args, config) -> Bench:
  from vqjax import data, parallel  # pylint: disable=g-import-not-at-top
  from vqjax.train import stage1  # pylint: disable=g-import-not-at-top

  batch_size = config.train.batch_size
  parallel.check_divisible(batch_size)
  task = stage1.Stage1Task(config)
  example = next(data.train_batches(task.train_data, batch_size, config.seed))
  state = task.create_train_state(jax.random.PRNGKey(config.seed),
                                  {k: v[:1] for k, v in example.items()})
  step_fn = parallel.data_parallel(task.train_step)
  bench = Bench(name="vqvae", step_fn=step_fn,
                state=parallel.replicate(state),
                batch=jax.device_put(parallel.shard(example)),
                batch_size=batch_size, task=task)
  per_device = batch_size // jax.local_device_count()
  x = stage1.to_float(jnp.asarray(example["image"][:per_device]))
  bench.breakdown = lambda: vqvae_breakdown(task, state, x, args.repeats)
  bench.model_flops = lambda: direct_convolution_flops(bench)
  return bench


def direct_convolution_flops(bench: Bench) -> float:
  """Per-device FLOPs of `bench`'s step with every convolution computed
  directly (no Winograd): what the architecture costs."""
  from vqjax import parallel  # pylint: disable=g-import-not-at-top
  reference = copy.copy(bench.task)  # Same data and state; direct convolutions:
  reference.model = bench.task.eval_model  # the inference build's.
  step = parallel.data_parallel(reference.train_step)
  return compiled_flops(step.lower(bench.state, bench.batch).compile())


def _fwd_bwd(fn: Callable, params, inputs: tuple,
             input_grad: bool = True) -> Callable:
  """jit of the gradient of `sum(o * cos(o))` over the float outputs `o` of
  `fn(params, *inputs)` w.r.t. the params and (if `input_grad`) the float
  inputs: one forward and one backward pass, as in training."""

  def loss(params, *inputs):
    out = fn(params, *inputs)
    return sum(jnp.sum(o * jnp.cos(o)) for o in jax.tree_util.tree_leaves(out)
               if jnp.issubdtype(o.dtype, jnp.floating))

  args = (params,) + (inputs if input_grad else ())
  argnums = tuple(i for i, v in enumerate(args)
                  if jax.tree_util.tree_leaves(v) and all(
                      jnp.issubdtype(l.dtype, jnp.floating)
                      for l in jax.tree_util.tree_leaves(v)))
  return jax.jit(jax.grad(loss, argnums=argnums))


def _time_component(name: str, fn: Callable, params, inputs: tuple,
                    repeats: int, input_grad: bool = True) -> dict:
  step = _fwd_bwd(fn, params, inputs, input_grad)
  compiled = step.lower(params, *inputs).compile()
  flops = compiled_flops(compiled)
  seconds = _median_time(lambda: compiled(params, *inputs), repeats, inner=3)
  return {"component": name, "ms": 1e3 * seconds, "gflop": flops / 1e9,
          "gflop_per_s": flops / seconds / 1e9}


def vqvae_breakdown(task, state, x: jax.Array, repeats: int) -> list[dict]:
  """Forward + backward time of each VQ-VAE component on one device's batch.

  Each component is jitted on its own with its real input shapes; the sum of
  the rows approximates the step minus the optimizer and glue (XLA fuses
  across components in the full step, so the rows do not add up exactly).
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from vqjax import quantizer as vq  # pylint: disable=g-import-not-at-top
  from vqjax.models import build  # pylint: disable=g-import-not-at-top
  from vqjax.models import vqvae as vqvae_models  # pylint: disable=g-import-not-at-top

  params = state.params
  enc, dec = params["encoder"], params["decoder"]
  cfg = task.config
  nh = cfg.model.num_hiddens
  layers = build.layers(cfg.model.kernels)  # What the trained model uses.
  conv = layers.get("conv", nn.Conv)
  conv_transpose = layers.get("conv_transpose", nn.ConvTranspose)
  stack = vqvae_models.ResidualStack(nh, cfg.model.num_residual_hiddens,
                                     cfg.model.num_residual_layers, conv=conv)
  conv3 = conv(nh, (3, 3))
  rows = []

  def apply(module):
    def fn(p, i):
      return module.apply({"params": p}, i)
    return fn

  def add(name, module, p, inp, input_grad=True):
    rows.append(_time_component(name, apply(module), p, (inp,), repeats,
                                input_grad))
    return apply(module)(p, inp)

  h = x
  down = sorted(k for k in enc if k.startswith("Conv_") and
                enc[k]["kernel"].shape[:2] == (4, 4))
  for i, k in enumerate(down):
    feats = enc[k]["kernel"].shape[-1]
    h = jax.nn.relu(add(f"encoder {k} 4x4/2 {h.shape[-1]}->{feats}",
                        conv(feats, (4, 4), strides=(2, 2)), enc[k], h,
                        input_grad=i > 0))  # No gradient for the images.
  convs = sorted(k for k in enc if k.startswith("Conv_") and k not in down)
  for k in convs:
    h = add(f"encoder {k} 3x3 {h.shape[-1]}->{nh}", conv3, enc[k], h)
  h = add("encoder residual stack", stack, enc["ResidualStack_0"], h)
  code_dim = cfg.quantizer.code_dim
  z = add(f"pre-quantization 1x1 {nh}->{code_dim}",
          conv(code_dim, (1, 1)), params["pre_quantization"], h)

  # The quantizer: as in training (EMA update + dead-code restart).
  ema = state.model_state["vq_ema"]["quantizer"]
  q = vq.EMAState(**ema)
  key = jax.random.PRNGKey(0)
  nearest_code = layers.get("nearest_code", vq.nearest_code)

  def quant(p, z):
    del p
    codebook = q.codebook
    indices = nearest_code(z, codebook)
    z_q = vq.lookup(indices, codebook)
    new = vq.ema_update(q, z, indices, cfg.quantizer.decay,
                        cfg.quantizer.epsilon)
    new, _ = vq.restart_dead_codes(new, z, key,
                                   max(cfg.quantizer.dead_code_threshold, 0.0),
                                   cfg.quantizer.decay)
    return (vq.straight_through(z, z_q), vq.commitment_loss(z, z_q),
            jax.lax.stop_gradient(new.codebook))

  rows.append(_time_component("quantizer (EMA + restart)", quant, {}, (z,),
                              repeats))
  zq = vq.lookup(vq.nearest_code(z, q.codebook), q.codebook)
  h = add(f"decoder Conv_0 3x3 {code_dim}->{nh}", conv3, dec["Conv_0"], zq)
  h = add("decoder residual stack", stack, dec["ResidualStack_0"], h)
  ups = sorted(k for k in dec if k.startswith("ConvTranspose_"))
  for i, k in enumerate(ups):
    feats = dec[k]["kernel"].shape[-1]
    h = add(f"decoder {k} 4x4/2T {h.shape[-1]}->{feats}",
            conv_transpose(feats, (4, 4), strides=(2, 2)), dec[k], h)
    if i < len(ups) - 1:
      h = jax.nn.relu(h)
  return rows


# ----------------------------------------------------------------- stage 2 --

def _stage2(args, config) -> Bench:
  """The PixelCNN prior's train step (configs/mnist_prior.py: 7x7 codes,
  K=512), on random codes: its cost depends only on the shapes."""
  from vqjax import data, parallel  # pylint: disable=g-import-not-at-top
  from vqjax.train import prior  # pylint: disable=g-import-not-at-top

  batch_size = config.train.batch_size
  parallel.check_divisible(batch_size)
  if config.vqvae_workdir:
    num_values, grid = 512, (7, 7, 1)  # the MNIST VQ-VAE's codes
    codes = np.random.default_rng(0).integers(
        0, num_values, (4 * batch_size,) + grid).astype(np.int16)
  else:  # a pixel-level config: real images
    real = data.load(config.data, "train")
    num_values = 256
    codes = real.batch(np.arange(4 * batch_size))["image"]
  fake = data.Dataset(name="bench", images=codes,
                      labels=np.zeros(len(codes), np.int32), num_classes=0)
  task = prior.PriorTask(config, workdir="", datasets=(fake, fake, num_values))
  example = next(data.train_batches(fake, batch_size, config.seed))
  state = task.create_train_state(jax.random.PRNGKey(config.seed),
                                  {k: v[:1] for k, v in example.items()})
  bench = Bench(name="prior", step_fn=parallel.data_parallel(task.train_step),
                state=parallel.replicate(state),
                batch=jax.device_put(parallel.shard(example)),
                batch_size=batch_size, task=task)
  per_device = batch_size // jax.local_device_count()
  x = jnp.asarray(example["image"][:per_device], jnp.int32)
  bench.breakdown = lambda: prior_breakdown(task, state, x, args.repeats)
  bench.model_flops = lambda: direct_convolution_flops(bench)
  return bench


def prior_breakdown(task, state, x: jax.Array, repeats: int) -> list[dict]:
  """Forward + backward time of the Gated PixelCNN's parts on one device's
  batch: one middle layer's vertical convolution and horizontal stack (times
  the layer count is most of the model), the head with the cross-entropy, and
  the whole loss."""
  import optax  # pylint: disable=g-import-not-at-top
  model = task.model
  d = model.kernel_size // 2
  params = {"params": state.params}
  bound = model.bind(params)
  pixelcnn = bound.pixelcnn
  emb = pixelcnn.embed(x)
  v_pad = jnp.pad(emb, ((0, 0), (d, 0), (d, d), (0, 0)))
  h_pad = jnp.pad(emb, ((0, 0), (0, 0), (d, 0), (0, 0)))
  layer = 1 if model.num_layers > 1 else 0
  v_pre = pixelcnn.layers[layer].vertical(v_pad, 0.0)
  skip = pixelcnn.layers[layer].horizontal(h_pad, v_pre, 0.0)[1]

  def part(fn):  # fn(the bound GatedPixelCNN, *inputs)
    return lambda p, *inputs: fn(model.bind(p).pixelcnn, *inputs)

  def head_loss(m, skip):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        m.head(skip), x))

  def loss(m):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        m(x), x))

  f, k = model.features, model.kernel_size
  rows = [
      _time_component(f"vertical conv {d + 1}x{k} {f}->{2 * f} (1 layer)",
                      part(lambda m, v: m.layers[layer].vertical(v, 0.0)),
                      params, (v_pad,), repeats),
      _time_component(f"horizontal stack 1x{d + 1}, link, gate, 1x1s (1 layer)",
                      part(lambda m, h, v: m.layers[layer].horizontal(h, v, 0.0)),
                      params, (h_pad, v_pre), repeats),
      _time_component(f"head {model.head_features}->{model.num_values} + "
                      "cross-entropy", part(head_loss), params, (skip,),
                      repeats),
      _time_component(f"whole loss ({model.num_layers + 1} layers), no Adam",
                      lambda p: loss(model.bind(p)), params, (), repeats),
  ]
  return rows


STAGES: dict[str, Callable[[Any, Any], Bench]] = {"1": _stage1, "2": _stage2}
DEFAULT_CONFIGS = {"1": "configs/mnist_vqvae.py", "2": "configs/mnist_prior.py"}


# ------------------------------------------------------------------ driver --

def measure(bench: Bench, steps: int, repeats: int) -> dict:
  """Times `bench.step_fn`, reads its FLOPs; returns a row of the table."""
  step_fn, state, batch = bench.step_fn, bench.state, bench.batch
  compiled = step_fn.lower(state, batch).compile()
  flops = compiled_flops(compiled) * jax.local_device_count()
  model_flops = (bench.model_flops() * jax.local_device_count()
                 if bench.model_flops is not None else flops)

  # Warm-up: compile and run a few steps (not timed).
  for _ in range(3):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / steps)
  bench.state = state
  seconds = statistics.median(times)
  params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  return {"step": bench.name, "batch": bench.batch_size,
          "devices": jax.local_device_count(),
          "parameters": params // jax.local_device_count(),  # replicated
          "images_per_s": bench.batch_size / seconds,
          "step_ms": 1e3 * seconds,
          "step_ms_all": [1e3 * t for t in times],
          "model_gflop_per_step": model_flops / 1e9,
          "executed_gflop_per_step": flops / 1e9,
          "model_gflop_per_s": model_flops / seconds / 1e9,
          "executed_gflop_per_s": flops / seconds / 1e9}


def _load() -> str:
  try:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "n/a"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--stage", default="1", choices=sorted(STAGES))
  parser.add_argument("--config", default="",
                      help="config file[:variant] (default: the stage's).")
  parser.add_argument("--batch-size", type=int, default=0,
                      help="global batch (default: the config's).")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config field, e.g. "
                           "--set model.kernels=xla (repeatable).")
  parser.add_argument("--steps", type=int, default=10,
                      help="steps per timed repeat.")
  parser.add_argument("--repeats", type=int, default=5,
                      help="timed repeats; the median is reported.")
  parser.add_argument("--breakdown", action="store_true",
                      help="also time each component's forward + backward.")
  parser.add_argument("--json", action="store_true",
                      help="print one JSON object instead of tables.")
  parser.add_argument("--cpu-devices", type=int, default=0,
                      help="CPU devices, as the scripts' --cpu_devices (0: "
                           "one per core, dividing the batch).")
  args = parser.parse_args(argv)

  # pylint: disable-next=g-import-not-at-top
  from vqjax import xla_cpu
  config = load_config(args.config or DEFAULT_CONFIGS[args.stage])
  if args.batch_size:
    config.train.batch_size = args.batch_size
  for override in args.set:
    key, _, value = override.partition("=")
    *parents, name = key.split(".")
    node = config
    for parent in parents:
      node = node.get(parent, {})
    if name not in node:
      parser.error(f"--set {override}: the config has no field {key!r}")
    try:
      node[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError):  # A bare string: --set model.kernels=xla
      node[name] = value
  # As the training scripts do, before JAX starts (CPU backend only).
  cpu = xla_cpu.configure(args.cpu_devices, (config.train.batch_size,))
  bench = STAGES[args.stage](args, config)
  matmul_before = matmul_flops_per_s()
  row = measure(bench, args.steps, args.repeats)
  matmul_after = matmul_flops_per_s()
  matmul = max(matmul_before, matmul_after)  # The conservative reference.
  row["matmul_gflop_per_s"] = matmul / 1e9
  row["mfu"] = row["model_gflop_per_s"] * 1e9 / matmul
  row["hfu"] = row["executed_gflop_per_s"] * 1e9 / matmul
  row["load_average"] = _load()
  row["jax"] = jax.__version__
  row["malloc"] = "reuse_freed_memory" if cpu["malloc"] else "default"
  if "kernels" in config.model:
    from vqjax.models import build  # pylint: disable=g-import-not-at-top
    row["kernels"] = build.resolve_kernels(config.model.kernels)
  row["platform"] = jax.devices()[0].platform
  result = {"train_step": row}
  if args.breakdown and bench.breakdown is not None:
    result["breakdown"] = bench.breakdown()

  if args.json:
    print(json.dumps(result, indent=2))
    return 0
  print(f"jax {row['jax']} on {row['devices']} {row['platform']} device(s), "
        f"kernels {row.get('kernels', '-')}; {row['parameters']} parameters; "
        f"load average {row['load_average']}; malloc {row['malloc']}; "
        "step times (ms): "
        + ", ".join(f"{t:.1f}" for t in row["step_ms_all"]))
  header = (f"{'step':<8}{'batch':>6}{'images/s':>10}{'step ms':>9}"
            f"{'model GFLOP':>13}{'executed':>10}{'matmul GFLOP/s':>16}"
            f"{'MFU':>7}{'HFU':>7}")
  print(header)
  print(f"{row['step']:<8}{row['batch']:>6}{row['images_per_s']:>10.1f}"
        f"{row['step_ms']:>9.1f}{row['model_gflop_per_step']:>13.2f}"
        f"{row['executed_gflop_per_step']:>10.2f}"
        f"{row['matmul_gflop_per_s']:>16.1f}"
        f"{100 * row['mfu']:>6.1f}%{100 * row['hfu']:>6.1f}%")
  if "breakdown" in result:
    print()
    print(f"{'component (forward + backward)':<56}{'ms':>8}{'GFLOP':>8}"
          f"{'GFLOP/s':>9}")
    for r in result["breakdown"]:
      print(f"{r['component']:<56}{r['ms']:>8.2f}{r['gflop']:>8.3f}"
            f"{r['gflop_per_s']:>9.1f}")
    if args.stage == "1":  # Stage 1's rows partition the model.
      total = sum(r["ms"] for r in result["breakdown"])
      print(f"{'sum of components':<56}{total:>8.2f}")
    print(f"{'full train step (incl. loss, Adam, glue)':<56}"
          f"{row['step_ms']:>8.2f}{row['executed_gflop_per_step']:>8.3f}"
          f"{row['executed_gflop_per_s']:>9.1f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
