"""Sample-quality numbers for a run: FID on a classifier trained on the
dataset, an Inception-score analogue and the predicted-class histogram.

  python evaluate.py --workdir=runs/prior --num=3000
  python evaluate.py --workdir=runs/vqvae       # test reconstructions (any stage-1 run)
  python evaluate.py --workdir=runs/vqvae2_bottom --top_workdir=runs/vqvae2_top
  python evaluate.py --workdir=runs/prior --repeats=5  # mean and spread of FID

Writes WORKDIR/evaluation.json and prints a table, with the floor (real
training images against the test split) for scale, and the test bits/dim
bound: decoder likelihood plus code cost (uniform codes, the VAE's KL, or the
prior's NLL for a prior run).
"""

import json
import os

from absl import flags

from vqjax import cli, evaluation

flags.DEFINE_string("workdir", None, "A train_vqvae.py or train_prior.py run.")
flags.DEFINE_integer("num", 3000, "Images per scored set.")
flags.DEFINE_float("temperature", 1.0, "Prior sampling temperature (> 0).")
flags.DEFINE_integer("seed", 0, "Same seed, same samples.")
flags.DEFINE_integer("repeats", 1, "Sample sets per score (seeds --seed, "
                     "--seed + 1, ...): reports mean FID and its standard "
                     "deviation, which is about a point at --num=3000.")
flags.DEFINE_integer("classifier_steps", None, "Steps to train the dataset's "
                     "classifier if none is cached (default: 1500, ~3 MNIST "
                     "epochs).")
flags.DEFINE_string("top_workdir", None, "VQ-VAE-2: the top-level prior run; "
                    "--workdir is then the bottom-level prior.")
flags.mark_flag_as_required("workdir")
flags.DEFINE_float("guidance", 0.0, "Classifier-free guidance weight w >= 0 "
                   "(a prior trained with --config.model.label_dropout > 0; "
                   "a VQ-VAE-2's top prior): logits c + w (c - u).")
flags.register_validator("temperature", lambda t: t > 0,
                         "--temperature must be > 0.")
flags.register_validator("guidance", lambda w: w >= 0,
                         "--guidance must be >= 0.")
flags.register_validator("num", lambda n: n >= 2, "--num must be >= 2.")
flags.register_validator("repeats", lambda r: r >= 1, "--repeats must be >= 1.")
FLAGS = flags.FLAGS


def main():
  report = evaluation.evaluate_run(FLAGS.workdir, FLAGS.num, FLAGS.temperature,
                                   FLAGS.seed, FLAGS.classifier_steps,
                                   FLAGS.top_workdir, FLAGS.repeats,
                                   FLAGS.guidance)
  path = os.path.join(FLAGS.workdir, "evaluation.json")
  with open(path, "w") as f:
    json.dump(report, f, indent=2)
  print(evaluation.format_report(report))
  print(f"Wrote {path}")


if __name__ == "__main__":
  cli.run(main)
