"""The quantizer variants side by side: one stage-1 model, one step budget.

  export VQJAX_DATA_DIR=../shared/data
  python benchmarks/quantizers.py train --root=runs/quantizers  # all runs, one at a time
  python benchmarks/quantizers.py evaluate --root=runs/quantizers  # evaluate.py on each
  python benchmarks/quantizers.py throughput --root=runs/quantizers  # step-time ratios
  python benchmarks/quantizers.py table --root=runs/quantizers  # print the table
  (`--datasets mnist|fashion_mnist ...` after the command: it takes a list.)

Every variant trains `configs/mnist_vqvae.py` (the same encoder and decoder,
K=512 and D=64 where they apply, batch 128, Adam 3e-4) for `--steps` steps on
each dataset (`--datasets`, default MNIST and Fashion-MNIST), in
`ROOT/<dataset>/<variant>`, by `train_vqvae.py` with the variant's
`--config.quantizer.*` overrides (`VARIANTS`); `evaluate.py --workdir=<run>`
then scores its test reconstructions (FID on the dataset's classifier).

The table reads each run's final test metrics (`metrics.jsonl`), its
`evaluation.json` and `ROOT/throughput.json`:

* nMSE: test MSE of the clipped reconstructions / variance of the training
  images;
* perplexity and codes used: test-set code usage per codebook (the mean over
  the C code channels of residual and grouped VQ), over its K codes;
* bits: C log2 K, the bits one position's codes can carry;
* FID: `evaluate.py`'s "test reconstructions" row;
* step: median train-step time relative to plain VQ, each variant's compiled
  step timed in turn, `--rounds` times round-robin in one process, so every
  variant sees the same machine load (a ratio, not seconds: the machine is
  shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (label, --config.quantizer.* overrides). All but plain VQ start from
# today's default (EMA codebook, decay 0.99, dead-code restarts below 1 use
# per step); codebook-free kinds ignore the EMA settings.
VARIANTS = {
    "plain": ("plain VQ (codebook loss, no restarts)",
              {"use_ema": False, "dead_code_threshold": 0.0}),
    "ema": ("VQ + EMA + restarts (default)", {}),
    "rotation": ("VQ + EMA + restarts + rotation trick",
                 {"gradient": "rotation"}),
    "rotation_plain": ("plain VQ + rotation trick",
                       {"use_ema": False, "dead_code_threshold": 0.0,
                        "gradient": "rotation"}),
    "cosine": ("cosine VQ, lookup_dim 16 (+ EMA, restarts)",
               {"cosine": True, "lookup_dim": 16}),
    "fsq": ("FSQ, levels (8,5,5,5)", {"kind": "fsq", "levels": (8, 5, 5, 5)}),
    "lfq": ("LFQ, 2^10 codes", {"kind": "lfq", "num_codes": 1024}),
    "residual": ("residual VQ, depth 4 (+ EMA, restarts)", {"depth": 4}),
    "grouped": ("grouped VQ, 4 groups (+ EMA, restarts)", {"groups": 4}),
}
DATASETS = ("mnist", "fashion_mnist")
CONFIG = "configs/mnist_vqvae.py"


def _overrides(variant: str) -> list[str]:
  def value(v):
    return repr(v) if isinstance(v, tuple) else str(v)
  return [f"--config.quantizer.{k}={value(v)}"
          for k, v in VARIANTS[variant][1].items()]


def _workdir(root: str, dataset: str, variant: str) -> str:
  return os.path.join(root, dataset, variant)


def _run(args: list[str], log: str) -> int:
  os.makedirs(os.path.dirname(log), exist_ok=True)
  start = time.time()
  with open(log, "a") as f:
    f.write(f"$ {' '.join(args)}\n")
    f.flush()
    code = subprocess.call([sys.executable, *args], cwd=ROOT_DIR, stdout=f,
                           stderr=subprocess.STDOUT)
    f.write(f"# exit {code} after {time.time() - start:.0f} s\n")
  return code


def train(opts) -> None:
  for dataset in opts.datasets:
    for variant in opts.variants:
      workdir = _workdir(opts.root, dataset, variant)
      args = ["train_vqvae.py", f"--config={CONFIG}", f"--workdir={workdir}",
              f"--config.data.name={dataset}",
              f"--config.train.num_steps={opts.steps}",
              f"--config.eval.every={opts.steps}",
              f"--config.checkpoint.every={opts.steps}",
              "--config.progress_bar=False", *_overrides(variant)]
      code = _run(args, os.path.join(opts.root, "logs",
                                     f"{dataset}_{variant}.log"))
      print(f"{dataset} {variant}: train exit {code}", flush=True)


def evaluate(opts) -> None:
  for dataset in opts.datasets:
    for variant in opts.variants:
      workdir = _workdir(opts.root, dataset, variant)
      code = _run(["evaluate.py", f"--workdir={workdir}"],
                  os.path.join(opts.root, "logs",
                               f"{dataset}_{variant}_evaluate.log"))
      print(f"{dataset} {variant}: evaluate exit {code}", flush=True)


def throughput(opts) -> None:
  """Median step time of each variant relative to plain VQ (MNIST batch)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "train_throughput", os.path.join(ROOT_DIR, "benchmarks",
                                       "train_throughput.py"))
  tt = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = tt  # Its dataclasses look themselves up there.
  spec.loader.exec_module(tt)
  from vqjax import xla_cpu  # pylint: disable=g-import-not-at-top
  base = tt.load_config(CONFIG)
  xla_cpu.configure(0, (base.train.batch_size,))
  import jax  # pylint: disable=g-import-not-at-top
  benches = {}
  for variant in opts.variants:
    config = tt.load_config(CONFIG)
    for key, value in VARIANTS[variant][1].items():
      config.quantizer[key] = value
    bench = tt._stage1(argparse.Namespace(repeats=1), config)  # pylint: disable=protected-access
    for _ in range(3):  # Compile and warm up.
      bench.state, metrics = bench.step_fn(bench.state, bench.batch)
    jax.block_until_ready((bench.state, metrics))
    benches[variant] = bench
    print(f"compiled {variant}", flush=True)
  times = {v: [] for v in benches}
  for _ in range(opts.rounds):
    for variant, bench in benches.items():
      start = time.perf_counter()
      for _ in range(opts.timed_steps):
        bench.state, metrics = bench.step_fn(bench.state, bench.batch)
      jax.block_until_ready((bench.state, metrics))
      times[variant].append((time.perf_counter() - start) / opts.timed_steps)
  medians = {v: statistics.median(t) for v, t in times.items()}
  reference = medians.get("plain") or next(iter(medians.values()))
  result = {"ratio_to_plain": {v: m / reference for v, m in medians.items()},
            "median_step_ms": {v: 1e3 * m for v, m in medians.items()},
            "rounds": opts.rounds, "steps_per_round": opts.timed_steps,
            "devices": jax.local_device_count(),
            "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "date": time.strftime("%Y-%m-%d %H:%M")}
  os.makedirs(opts.root, exist_ok=True)
  with open(os.path.join(opts.root, "throughput.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


def _final_test_metrics(workdir: str) -> dict | None:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  found = None
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      if record.get("split") == "test":
        found = record
  return found


def _fid(workdir: str) -> float | None:
  path = os.path.join(workdir, "evaluation.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)["sets"]["test reconstructions"]["fid"]


def _bits(workdir: str) -> float | None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    q = json.load(f)["quantizer"]
  import math  # pylint: disable=g-import-not-at-top
  if q.get("kind") == "fsq":
    return math.log2(math.prod(q["levels"]))
  channels = max(q.get("depth", 1), q.get("groups", 1))
  if q.get("kind") == "lfq":
    channels = 1
  return channels * math.log2(q["num_codes"])


def table(opts) -> str:
  ratios = {}
  path = os.path.join(opts.root, "throughput.json")
  if os.path.exists(path):
    with open(path) as f:
      ratios = json.load(f)["ratio_to_plain"]
  fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
  lines = ["| variant | dataset | test nMSE | perplexity | codes used | bits "
           "| recon FID | step time vs plain |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for variant in opts.variants:
    for dataset in opts.datasets:
      workdir = _workdir(opts.root, dataset, variant)
      m = _final_test_metrics(workdir) or {}
      used = m.get("codes_used")
      lines.append(
          f"| {VARIANTS[variant][0]} | {dataset} | "
          f"{fmt(m.get('nmse'), '.4f')} | {fmt(m.get('perplexity'), '.1f')} | "
          f"{fmt(None if used is None else 100 * used, '.1f')}% | "
          f"{fmt(_bits(workdir), '.1f')} | {fmt(_fid(workdir), '.2f')} | "
          f"{fmt(ratios.get(variant), '.2f')} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("command", nargs="?", default="table",
                      choices=["train", "evaluate", "throughput", "table"])
  parser.add_argument("--root", default=os.path.join(ROOT_DIR, "runs",
                                                     "quantizers"))
  parser.add_argument("--datasets", nargs="+", default=list(DATASETS),
                      choices=list(DATASETS))
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                      choices=list(VARIANTS))
  parser.add_argument("--steps", type=int, default=1000,
                      help="train steps of every run")
  parser.add_argument("--rounds", type=int, default=5,
                      help="throughput: round-robin rounds")
  parser.add_argument("--timed-steps", type=int, default=5,
                      help="throughput: steps per variant per round")
  opts = parser.parse_args(argv)
  if opts.command == "train":
    train(opts)
  elif opts.command == "evaluate":
    evaluate(opts)
  elif opts.command == "throughput":
    throughput(opts)
  else:
    print(table(opts))
  return 0


if __name__ == "__main__":
  sys.exit(main())
