"""PyTorch eager baseline for the stage-1 train step (not part of vqjax).

The same VQ-VAE as `configs/mnist_vqvae.py` (Sonnet's: 128 hiddens, 32
residual hiddens, 2 residual layers, 28x28 -> 7x7, K=512, D=64, EMA decay
0.99, epsilon 1e-5, dead-code restart below 1.0 EMA uses), the same loss
(MSE / Var(data) + 0.25 * commitment), Adam(3e-4), batch 128, float32, one
training step = forward, backward, Adam update and EMA codebook update.

Needs torch, which vqjax does not depend on; keep it out of the project's
virtualenv:

  python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch
  /tmp/torchvenv/bin/python benchmarks/pytorch_baseline.py [--threads 2]

Real MNIST is read from $VQJAX_DATA_DIR/mnist if there (random images
otherwise; the speed does not depend on the pixels). Prints the median
images/s over `--repeats` runs of `--steps` steps, after warm-up. Never
imported by the tests; torch is imported inside `main` only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time


def _mnist_images(count: int):
  """Up to `count` MNIST training images as a uint8 torch tensor [N, 28, 28],
  or None when the files are not there."""
  import torch  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.environ.get("VQJAX_DATA_DIR", ""), "mnist",
                      "train-images-idx3-ubyte.gz")
  if not os.path.exists(path):
    return None
  with gzip.open(path, "rb") as f:
    raw = f.read()
  images = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8)
  return images.reshape(-1, 28, 28)[:count].clone()


def build(torch, channels_last: bool):
  """The model, EMA quantizer and train step. Returns `step(x) -> loss`."""
  nn, F = torch.nn, torch.nn.functional

  class Residual(nn.Module):

    def __init__(self, hiddens, residual_hiddens, layers):
      super().__init__()
      self.blocks = nn.ModuleList([nn.Sequential(
          nn.ReLU(), nn.Conv2d(hiddens, residual_hiddens, 3, padding=1),
          nn.ReLU(), nn.Conv2d(residual_hiddens, hiddens, 1))
                                   for _ in range(layers)])

    def forward(self, x):
      for block in self.blocks:
        x = x + block(x)
      return F.relu(x)

  class VQVAE(nn.Module):

    def __init__(self, hiddens=128, residual_hiddens=32, layers=2, codes=512,
                 dim=64):
      super().__init__()
      self.encoder = nn.Sequential(
          nn.Conv2d(1, hiddens // 2, 4, 2, 1), nn.ReLU(),
          nn.Conv2d(hiddens // 2, hiddens, 4, 2, 1), nn.ReLU(),
          nn.Conv2d(hiddens, hiddens, 3, padding=1),
          Residual(hiddens, residual_hiddens, layers),
          nn.Conv2d(hiddens, dim, 1))
      self.decoder = nn.Sequential(
          nn.Conv2d(dim, hiddens, 3, padding=1),
          Residual(hiddens, residual_hiddens, layers),
          nn.ConvTranspose2d(hiddens, hiddens // 2, 4, 2, 1), nn.ReLU(),
          nn.ConvTranspose2d(hiddens // 2, 1, 4, 2, 1))
      bound = (3.0 / dim) ** 0.5
      self.register_buffer("codebook", torch.empty(codes, dim).uniform_(
          -bound, bound))
      self.register_buffer("cluster_size", torch.zeros(codes))
      self.register_buffer("embed_sum", torch.zeros(codes, dim))
      self.count = 0

  model = VQVAE()
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
  decay, eps, threshold, beta = 0.99, 1e-5, 1.0, 0.25
  data_variance = 0.095  # about MNIST's, in [-0.5, 0.5] units

  def quantize(z):
    """z [B, D, h, w] -> (straight-through z_q, commitment loss)."""
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    cb = model.codebook
    with torch.no_grad():
      dist = ((flat * flat).sum(1, keepdim=True) - 2.0 * flat @ cb.t()
              + (cb * cb).sum(1))
      idx = dist.argmin(1)
      # EMA codebook update (Sonnet/Haiku VectorQuantizerEMA semantics).
      counts = torch.bincount(idx, minlength=cb.shape[0]).float()
      sums = torch.zeros_like(cb).index_add_(0, idx, flat)
      model.count += 1
      model.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
      model.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
      bias = 1.0 - decay ** model.count
      size = model.cluster_size / bias
      total = size.sum()
      smoothed = (size + eps) / (total + cb.shape[0] * eps) * total
      z_q = cb[idx]  # the codes before this step's update, as in vqjax
      model.codebook.copy_((model.embed_sum / bias) / smoothed[:, None])
      # Dead-code restart from random encoder outputs.
      dead = size < threshold
      picks = torch.randint(0, flat.shape[0], (cb.shape[0],))
      fresh = flat[picks]
      model.codebook.copy_(torch.where(dead[:, None], fresh, model.codebook))
      model.cluster_size.copy_(torch.where(dead, threshold * bias,
                                           model.cluster_size))
      model.embed_sum.copy_(torch.where(dead[:, None], fresh * threshold * bias,
                                        model.embed_sum))
    z_q = z_q.reshape(b, h, w, d).permute(0, 3, 1, 2)
    commitment = beta * F.mse_loss(z, z_q)
    return z + (z_q - z).detach(), commitment

  def step(images):
    x = images.float().div_(255.0).sub_(0.5).unsqueeze(1)
    if channels_last:
      x = x.contiguous(memory_format=torch.channels_last)
    z = model.encoder(x)
    z_q, commitment = quantize(z)
    recon = model.decoder(z_q)
    loss = F.mse_loss(recon, x) / data_variance + commitment
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss

  return step


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--channels-last", action="store_true",
                      help="NHWC memory format (default: PyTorch's NCHW).")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)

  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  images = _mnist_images(args.batch_size)
  if images is None:
    images = torch.randint(0, 256, (args.batch_size, 28, 28), dtype=torch.uint8)
  step = build(torch, args.channels_last)

  # Matmul reference in the same process (like train_throughput.py).
  a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
  for _ in range(2):
    a @ b
  mm = []
  for _ in range(5):
    start = time.perf_counter()
    a @ b
    mm.append(time.perf_counter() - start)
  matmul = 2 * 2048 ** 3 / statistics.median(mm) / 1e9

  for _ in range(5):
    step(images)
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps):
      loss = step(images)
    float(loss)
    times.append((time.perf_counter() - start) / args.steps)
  seconds = statistics.median(times)
  result = {"framework": f"torch {torch.__version__} eager",
            "threads": args.threads, "batch": args.batch_size,
            "channels_last": args.channels_last,
            "images_per_s": args.batch_size / seconds,
            "step_ms": 1e3 * seconds,
            "step_ms_all": [1e3 * t for t in times],
            "matmul_gflop_per_s": matmul,
            "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg())}
  if args.json:
    print(json.dumps(result, indent=2))
  else:
    print(f"{result['framework']}, {args.threads} threads, batch "
          f"{args.batch_size}{', channels_last' if args.channels_last else ''}"
          f": {result['images_per_s']:.1f} images/s ({seconds * 1e3:.1f} ms/"
          f"step; repeats " + ", ".join(f"{t:.1f}" for t in
                                        result["step_ms_all"])
          + f" ms); matmul {matmul:.1f} GFLOP/s; load {result['load_average']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
