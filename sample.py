"""Sample from a trained prior and write PNG grids and the raw samples (.npy).

  python sample.py --workdir=runs/prior --num=64 --temperature=1.0
  python sample.py --workdir=runs/vqvae2_bottom --top_workdir=runs/vqvae2_top

The prior's checkpoint says which VQ-VAE it was trained on; that run is
restored and decodes the sampled codes.
"""

import os
import time

from absl import flags

from vqjax import cli, generate, runs

flags.DEFINE_string("workdir", None, "A train_prior.py run folder.")
flags.DEFINE_integer("num", 64, "Samples per grid.")
flags.DEFINE_float("temperature", 1.0, "Softmax temperature (> 0).")
flags.DEFINE_integer("seed", 0, "Same seed, same samples.")
flags.DEFINE_enum("method", "cached", ["cached", "plain"], "Sampler.")
flags.DEFINE_float("near_fraction", 0.25,
                   "Fraction of positions moved in 'codes near test codes'.")
flags.DEFINE_string("outdir", None, "Where to write (default: WORKDIR/samples).")
flags.DEFINE_string("vqvae_workdir", None,
                    "Decode with this stage-1 run instead of the linked one.")
flags.DEFINE_string("top_workdir", None,
                    "VQ-VAE-2: the top-level prior run; --workdir is then the "
                    "bottom-level prior, and samples are drawn top, then "
                    "bottom given top.")
flags.DEFINE_integer("per_image", 4, "VQ-VAE-2: new bottom codes drawn per "
                     "test image in the same-top-codes grid.")
flags.mark_flag_as_required("workdir")
flags.DEFINE_float("guidance", 0.0, "Classifier-free guidance weight w >= 0 "
                   "(a prior trained with --config.model.label_dropout > 0; "
                   "a VQ-VAE-2's top prior): logits c + w (c - u).")
flags.register_validator("temperature", lambda t: t > 0,
                         "--temperature must be > 0.")
flags.register_validator("guidance", lambda w: w >= 0,
                         "--guidance must be >= 0.")
flags.register_validator("num", lambda n: n > 0, "--num must be > 0.")
FLAGS = flags.FLAGS


def main():
  prior = runs.restore_prior(FLAGS.workdir, FLAGS.vqvae_workdir)
  outdir = FLAGS.outdir or os.path.join(FLAGS.workdir, "samples")
  start = time.perf_counter()
  top = generate.top_prior_for(prior, FLAGS.top_workdir, FLAGS.vqvae_workdir)
  if top is not None:
    paths = generate.write_hierarchical(top, prior, outdir, FLAGS.num,
                                        FLAGS.temperature, FLAGS.seed,
                                        FLAGS.method, FLAGS.per_image,
                                        FLAGS.guidance)
  else:
    paths = generate.write_all(prior, outdir, FLAGS.num, FLAGS.temperature,
                               FLAGS.seed, FLAGS.method, FLAGS.near_fraction,
                               FLAGS.guidance)
  print(f"Wrote {len(paths)} grids in {time.perf_counter() - start:.1f} s:")
  for path in paths:
    print(f"  {path}")


if __name__ == "__main__":
  cli.run(main)
