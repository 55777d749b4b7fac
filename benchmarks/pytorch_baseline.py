"""PyTorch eager baselines for the vqjax train steps (not part of vqjax).

`--model vqvae` (default): the stage-1 step. `--model prior`: the Gated
PixelCNN code prior of `configs/mnist_prior.py` on random 7x7 codes (K=512,
batch 64). `--model pixels`: the same Gated PixelCNN on raw MNIST pixels as
`configs/mnist_pixelcnn.py` (28x28, 256 values, batch 32); `--variant cpu`
sizes either PixelCNN like `configs/mnist_pixelcnn.py:cpu`. The PixelCNN
steps are described under `build_pixelcnn`; the rest of this docstring is
about the VQ-VAE.

Stage 1:

The same VQ-VAE as `configs/mnist_vqvae.py` (Sonnet's: 128 hiddens, 32
residual hiddens, 2 residual layers, 28x28 -> 7x7, K=512, D=64, EMA decay
0.99, epsilon 1e-5, dead-code restart below 1.0 EMA uses), the same loss
(MSE / Var(data) + 0.25 * commitment), Adam(3e-4), batch 128, float32, one
training step = forward, backward, Adam update and EMA codebook update.

Needs torch, which vqjax does not depend on; keep it out of the project's
virtualenv:

  python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch
  /tmp/torchvenv/bin/python benchmarks/pytorch_baseline.py [--threads 2]
  /tmp/torchvenv/bin/python benchmarks/pytorch_baseline.py --model prior \
      --channels-last --omp-wait-policy passive   # on cores shared with others

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


# Gated PixelCNN: vqjax.models.pixelcnn.GatedPixelCNN, layer for layer.
PIXELCNN_SIZES = {  # features, gated layers after the first, kernel, head
    "": (64, 8, 5, 128),     # prior_defaults(): mnist_prior.py, mnist_pixelcnn.py
    "cpu": (32, 6, 5, 64),   # mnist_pixelcnn.py:cpu
}
PIXELCNN_DATA = {  # values V, grid (H, W, C), batch, learning rate
    "prior": (512, (7, 7, 1), 64, 1e-3),
    "pixels": (256, (28, 28, 1), 32, 1e-3),
}


def _group_mask(torch, n_in, n_out, channels, mask_type, gated_out=False):
  """vqjax.models.pixelcnn.group_mask as a torch tensor [n_out, n_in]."""
  g_in = torch.arange(n_in) * channels // n_in
  if gated_out:
    g_out = (torch.arange(n_out // 2) * channels // (n_out // 2)).repeat(2)
  else:
    g_out = torch.arange(n_out) * channels // n_out
  if mask_type == "A":
    mask = g_in[None, :] < g_out[:, None]
  else:
    mask = g_in[None, :] <= g_out[:, None]
  return mask.float()


def build_pixelcnn(torch, num_values, channels, features, num_layers,
                   kernel_size, head_features, learning_rate, channels_last):
  """The Gated PixelCNN prior's train step. Returns `(step, model)`.

  The same model as `vqjax.models.pixelcnn.GatedPixelCNN` (its docstring has
  the layout), written as PyTorch users write it: `nn.Conv2d` layers in NCHW
  (1x1 convolutions for the link, residual, skip and head matmuls), explicit
  `F.pad` for the causal shifts, channel-group masks multiplied into the
  weights on every forward pass, the cross-entropy of `F.cross_entropy`
  averaged over every position and channel (nats per dim, as
  `vqjax.train.prior`), then `clip_grad_norm_(1.0)` and Adam, as
  `prior_defaults()` (its cosine schedule only changes the step size).
  Parameters and their shapes match vqjax's one for one; `--json` reports
  the count and the forward + backward FLOPs torch's FlopCounterMode sees.
  """
  nn, F = torch.nn, torch.nn.functional
  f, k, c, s = features, kernel_size, channels, head_features
  d = k // 2

  def gate(x):
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)

  class GatedLayer(nn.Module):

    def __init__(self, first, last):
      super().__init__()
      self.first, self.last = first, last
      self.vertical = nn.Conv2d(f, 2 * f, (d + 1, k))
      self.horizontal = nn.Conv2d(f, 2 * f, (1, d + 1))
      self.link = nn.Conv2d(2 * f, 2 * f, 1, bias=False)
      self.skip = nn.Conv2d(f, s, 1)
      centre = _group_mask(torch, f, 2 * f, c, "A" if first else "B",
                           gated_out=True)
      tap = torch.ones(2 * f, f, 1, d + 1)
      tap[:, :, 0, -1] = centre
      self.register_buffer("tap_mask", tap)
      self.register_buffer("skip_mask",
                           _group_mask(torch, f, s, c, "B")[:, :, None, None])
      if not last:
        self.res = nn.Conv2d(f, f, 1)
        self.register_buffer(
            "res_mask", _group_mask(torch, f, f, c, "B")[:, :, None, None])

    def forward(self, v_in, h_in):
      if self.first:  # output row i reads input rows i-d-1 .. i-1
        v_pad = F.pad(v_in[:, :, :-1], (d, d, d + 1, 0))
      else:
        v_pad = F.pad(v_in, (d, d, d, 0))
      v_pre = self.vertical(v_pad)
      h_pre = (F.conv2d(F.pad(h_in, (d, 0, 0, 0)),
                        self.horizontal.weight * self.tap_mask,
                        self.horizontal.bias) + self.link(v_pre))
      g = gate(h_pre)
      skip = F.conv2d(g, self.skip.weight * self.skip_mask, self.skip.bias)
      res = None
      if not self.last:
        res = F.conv2d(g, self.res.weight * self.res_mask, self.res.bias)
      return gate(v_pre), res, skip

  class GatedPixelCNN(nn.Module):

    def __init__(self):
      super().__init__()
      self.embedding = nn.Parameter(torch.randn(c, num_values, f // c))
      self.layers = nn.ModuleList([
          GatedLayer(first=(l == 0), last=(l == num_layers))
          for l in range(num_layers + 1)])
      self.head_hidden = nn.Conv2d(s, s, 1)
      self.head_out = nn.Conv2d(s, c * num_values, 1)
      self.register_buffer("hidden_mask", _group_mask(
          torch, s, s, c, "B")[:, :, None, None])
      self.register_buffer("out_mask", _group_mask(
          torch, s, c * num_values, c, "B")[:, :, None, None])

    def forward(self, x):
      """x [B, C, H, W] int64 -> logits [B, V, C, H, W]."""
      b, _, h, w = x.shape
      emb = self.embedding[torch.arange(c)[None, :, None, None], x]
      emb = emb.permute(0, 1, 4, 2, 3).reshape(b, f, h, w)  # groups by channel
      if channels_last:
        emb = emb.contiguous(memory_format=torch.channels_last)
      v_in = h_in = emb
      skip = 0.0
      for l, layer in enumerate(self.layers):
        v_in, res, sk = layer(v_in, h_in)
        skip = skip + sk
        if res is not None:
          h_in = res if l == 0 else h_in + res
      y = F.relu(skip)
      y = F.relu(F.conv2d(y, self.head_hidden.weight * self.hidden_mask,
                          self.head_hidden.bias))
      y = F.conv2d(y, self.head_out.weight * self.out_mask, self.head_out.bias)
      return y.reshape(b, c, num_values, h, w).transpose(1, 2)

  model = GatedPixelCNN()
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)

  def step(x):
    logits = model(x)
    loss = F.cross_entropy(logits, x)  # mean over B, C, H, W: nats per dim
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss

  return step, model


def _pixelcnn_inputs(torch, model_name, batch_size, num_values, grid):
  """[B, C, H, W] int64: random codes (prior) or MNIST pixels (pixels)."""
  h, w, c = grid
  if model_name == "pixels":
    images = _mnist_images(batch_size)
    if images is not None:
      return images[:, None].long()
  gen = torch.Generator().manual_seed(0)
  return torch.randint(0, num_values, (batch_size, c, h, w), generator=gen)


def _flops_and_params(torch, model, step, x):
  """(forward + backward FLOPs of one step by FlopCounterMode, parameters)."""
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  counter = FlopCounterMode(display=False)
  with counter:
    step(x)
  return (counter.get_total_flops(),
          sum(p.numel() for p in model.parameters()))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="vqvae",
                      choices=("vqvae", "prior", "pixels"),
                      help="vqvae: stage 1; prior: the PixelCNN on 7x7 codes; "
                           "pixels: the PixelCNN on raw MNIST pixels.")
  parser.add_argument("--variant", default="", choices=sorted(PIXELCNN_SIZES),
                      help="PixelCNN size: '' (prior_defaults) or 'cpu' "
                           "(mnist_pixelcnn.py:cpu).")
  parser.add_argument("--batch-size", type=int, default=0,
                      help="default: the model's config (128, 64, 32).")
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--channels-last", action="store_true",
                      help="NHWC memory format (default: PyTorch's NCHW).")
  parser.add_argument("--omp-wait-policy", default="",
                      choices=("", "active", "passive"),
                      help="OMP_WAIT_POLICY for torch's OpenMP threads (default: "
                           "the environment's). 'passive' when other processes "
                           "share the cores: spinning threads then wait for "
                           "each other at every parallel region.")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)

  if args.omp_wait_policy:  # Read by OpenMP when torch loads it.
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  extra = {}
  if args.model == "vqvae":
    batch_size = args.batch_size or 128
    images = _mnist_images(batch_size)
    if images is None:
      images = torch.randint(0, 256, (batch_size, 28, 28), dtype=torch.uint8)
    step = build(torch, args.channels_last)
  else:
    num_values, grid, default_batch, lr = PIXELCNN_DATA[args.model]
    batch_size = args.batch_size or default_batch
    features, num_layers, kernel_size, head = PIXELCNN_SIZES[args.variant]
    step, model = build_pixelcnn(torch, num_values, grid[-1], features,
                                 num_layers, kernel_size, head, lr,
                                 args.channels_last)
    images = _pixelcnn_inputs(torch, args.model, batch_size, num_values, grid)
    flops, params = _flops_and_params(torch, model, step, images)
    extra = {"model_gflop_per_step": flops / 1e9, "parameters": params,
             "features": features, "num_layers": num_layers,
             "kernel_size": kernel_size, "head_features": head,
             "num_values": num_values}

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
    loss.item()  # waits for the step
    times.append((time.perf_counter() - start) / args.steps)
  seconds = statistics.median(times)
  result = {"framework": f"torch {torch.__version__} eager",
            "model": args.model + (f":{args.variant}" if args.variant else ""),
            "threads": args.threads, "batch": batch_size,
            "channels_last": args.channels_last,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "images_per_s": batch_size / seconds,
            "step_ms": 1e3 * seconds,
            "step_ms_all": [1e3 * t for t in times],
            "matmul_gflop_per_s": matmul,
            **extra,
            "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg())}
  if "model_gflop_per_step" in result:
    result["mfu"] = result["model_gflop_per_step"] / seconds / matmul
  if args.json:
    print(json.dumps(result, indent=2))
  else:
    mfu = (f"; {result['model_gflop_per_step']:.2f} GFLOP/step, "
           f"{result['parameters']} parameters, MFU "
           f"{100 * result['mfu']:.1f}%" if "mfu" in result else "")
    print(f"{result['framework']}, {result['model']}, {args.threads} threads, "
          f"batch {batch_size}{', channels_last' if args.channels_last else ''}"
          f": {result['images_per_s']:.1f} images/s ({seconds * 1e3:.1f} ms/"
          f"step; repeats " + ", ".join(f"{t:.1f}" for t in
                                        result["step_ms_all"])
          + f" ms); matmul {matmul:.1f} GFLOP/s{mfu}; load "
          f"{result['load_average']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
