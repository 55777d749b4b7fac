"""Samples/s of plain vs cached Gated PixelCNN sampling.

  python benchmarks/sampling_speed.py            # full run
  python benchmarks/sampling_speed.py --quick    # fewer repeats and steps
  python benchmarks/sampling_speed.py --json     # machine-readable output
  python benchmarks/sampling_speed.py --only vqvae2_top_7x7_K512 \
      --set model.attention_every=0              # a shipped prior, changed
  python benchmarks/sampling_speed.py --only prior_7x7_K512 \
      --set model.label_dropout=0.1 --set sample.guidance=1.0  # guided

Each sampler is compiled and run once first (warm-up), then timed as the
median of a few runs. A plain step is a full forward pass of fixed cost, so
where a full plain run would take too long (28x28: H*W full passes per batch)
it is timed over its first `plain_steps` steps and extrapolated to H*W*C steps;
the output says so. With `sample.guidance` > 0 both samplers run with
classifier-free guidance (the batch twice over, `vqjax.sampling`).

The priors are built from the shipped configs (`configs/<name>.py[:variant]`,
`--set key=value` to change one); the VQ-VAE-2 bottom prior samples given
random top codes.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import time

import importlib.util
import os

import jax
import jax.numpy as jnp

from vqjax import sampling, xla_cpu
from vqjax.models import build

BATCH = 64
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shipped_config(name: str, variant: str = ""):
  """`configs/<name>.py:get_config(variant)`: the model the benchmark uses."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(_ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def override(config, setting: str) -> None:
  """Applies `key=value` (a Python literal, or a bare string) to `config`."""
  key, _, value = setting.partition("=")
  *parents, name = key.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  if name not in node:
    raise SystemExit(f"--set {setting}: the config has no field {key!r}")
  try:
    node[name] = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    node[name] = value


# name -> config file (and variant), grid, values per channel, plain steps
# timed (None: all), top grid (a VQ-VAE-2 bottom prior: 2x coarser top codes).
CONFIGS = {
    "prior_7x7_K512": dict(config="mnist_prior", height=7, width=7,
                           channels=1, num_values=512, plain_steps=None),
    "prior_7x7_K512_attention": dict(config="mnist_prior", variant="attention",
                                     height=7, width=7, channels=1,
                                     num_values=512, plain_steps=None),
    "vqvae2_top_7x7_K512": dict(config="mnist_vqvae2_prior", variant="top",
                                height=7, width=7, channels=1,
                                num_values=512, plain_steps=None),
    "vqvae2_bottom_14x14_K512": dict(
        config="mnist_vqvae2_prior", variant="bottom", height=14, width=14,
        channels=1, num_values=512, plain_steps=16, top=(7, 7)),
    "pixels_28x28_V256": dict(config="mnist_pixelcnn", height=28, width=28,
                              channels=1, num_values=256, plain_steps=16),
}


def _time(fn, repeats: int) -> tuple[float, float]:
  """(first-call seconds, median seconds of `repeats` later calls)."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def bench(name: str, cfg: dict, batch: int, repeats: int, plain_repeats: int,
          plain_steps: int | None, settings: list[str] = ()) -> dict:
  h, w, c = cfg["height"], cfg["width"], cfg["channels"]
  config = shipped_config(cfg["config"], cfg.get("variant", ""))
  for setting in settings:
    override(config, setting)
  top = cfg.get("top")
  # A class- or cluster-conditioned prior samples with its class input.
  num_classes = config.model.num_clusters or (10 if config.model.conditional
                                              else 0)
  model = build.code_prior(config, cfg["num_values"], c, num_classes,
                           top_num_codes=cfg["num_values"] if top else 0,
                           top_upsamples=1 if top else 0, inference=True)
  shape = (batch, h, w, c)
  top_codes = (jax.random.randint(jax.random.key(1), (batch, *top, 1), 0,
                                  cfg["num_values"]) if top else None)
  labels = (jnp.arange(batch, dtype=jnp.int32) % num_classes if num_classes
            else None)
  # Parameter values do not matter for speed; an "rbg" key compiles faster.
  params = jax.jit(model.init)(
      jax.random.key(0, impl="rbg"), jnp.zeros((1, h, w, c), jnp.int32),
      None if labels is None else labels[:1],
      top_codes=None if top is None else top_codes[:1])
  key = jax.random.key(0)
  total_steps = h * w * c
  guided = dict(guidance=config.sample.guidance,
                null_label=build.null_label(config, num_classes))

  cached_compile, cached_s = _time(
      lambda: sampling.sample(model, params, key, shape, method="cached",
                              labels=labels, top_codes=top_codes, **guided),
      repeats)

  steps = total_steps if plain_steps is None else min(plain_steps, total_steps)
  plain_compile, plain_run_s = _time(
      lambda: sampling._run(model, params, key, shape, 1.0, labels, None,
                            "plain", top_codes, False, return_logits=False,
                            num_steps=steps, **guided)[0],
      plain_repeats)
  plain_s = plain_run_s * total_steps / steps

  return {
      "name": name,
      "shape": list(shape),
      "num_values": cfg["num_values"],
      "model": f"configs/{cfg['config']}.py"
               + (f":{cfg['variant']}" if cfg.get("variant") else "") + ": "
               + ", ".join(f"{k}={v}" for k, v in config.model.items()
                           if k != "conditional")
               + (f"; guidance {config.sample.guidance:g}"
                  if config.sample.guidance else ""),
      "plain_seconds": plain_s,
      "plain_samples_per_s": batch / plain_s,
      "plain_steps_timed": steps,
      "plain_extrapolated": steps < total_steps,
      "plain_repeats": plain_repeats,
      "plain_first_call_seconds": plain_compile,
      "cached_seconds": cached_s,
      "cached_samples_per_s": batch / cached_s,
      "cached_repeats": repeats,
      "cached_first_call_seconds": cached_compile,
      "speedup": plain_s / cached_s,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="1 plain and 2 cached repeats, <= 4 plain steps.")
  parser.add_argument("--json", action="store_true",
                      help="print one JSON object instead of a table.")
  parser.add_argument("--batch", type=int, default=BATCH)
  parser.add_argument("--plain-steps", type=int, default=None,
                      help="time this many plain steps for every config and "
                           "extrapolate (default: per config).")
  parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS),
                      help="run only these configs.")
  parser.add_argument("--set", action="append", default=[],
                      metavar="KEY=VALUE",
                      help="override a config value (e.g. "
                           "model.attention_every=0) in every prior timed.")
  args = parser.parse_args()
  xla_cpu.configure(devices=None)  # As sample.py does (CPU only).

  repeats, plain_repeats = (2, 1) if args.quick else (5, 3)
  results = []
  for name in args.only or CONFIGS:
    cfg = CONFIGS[name]
    steps = cfg["plain_steps"] if args.plain_steps is None else args.plain_steps
    if args.quick:
      steps = 4 if steps is None else min(steps, 4)
    results.append(bench(name, cfg, args.batch, repeats, plain_repeats, steps,
                         args.set))

  report = {
      "device": str(jax.devices()[0]),
      "backend": jax.default_backend(),
      "jax": jax.__version__,
      "settings": args.set,
      "results": results,
  }
  if args.json:
    print(json.dumps(report, indent=2))
    return
  print(f"device: {report['device']} ({report['backend']}), "
        f"jax {jax.__version__}" + (f", --set {' '.join(args.set)}"
                                     if args.set else ""))
  for r in results:
    print(f"{r['name']}: {r['model']}")
  header = (f"{'config':<26}{'batch shape':<18}{'plain s':>10}{'plain /s':>10}"
            f"{'cached s':>10}{'cached /s':>11}{'speedup':>9}")
  print(header)
  print("-" * len(header))
  for r in results:
    star = "*" if r["plain_extrapolated"] else ""
    print(f"{r['name']:<26}{'x'.join(map(str, r['shape'])):<18}"
          f"{r['plain_seconds']:>9.2f}{star:1}{r['plain_samples_per_s']:>10.3f}"
          f"{r['cached_seconds']:>10.2f}{r['cached_samples_per_s']:>11.2f}"
          f"{r['speedup']:>8.1f}x")
  for r in results:
    if r["plain_extrapolated"]:
      print(f"* {r['name']}: plain timed over {r['plain_steps_timed']} of "
            f"{r['shape'][1] * r['shape'][2] * r['shape'][3]} steps, "
            "extrapolated.")


if __name__ == "__main__":
  main()
