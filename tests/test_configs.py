"""Every shipped config and variant loads and describes a buildable model."""

import pytest

from conftest import load_config
from vqjax.models import build

VQVAE_CONFIGS = [("mnist_vqvae", ""), ("mnist_vqvae", "tiny"),
                 ("cifar10_vqvae", ""), ("mnist_vqvae2", ""),
                 ("mnist_vqvae2", "tiny"), ("cifar10_vqvae2", ""),
                 ("cifar10_vqvae2", "16"), ("mnist_vae", ""),
                 ("mnist_vae", "ae"), ("mnist_vae", "tiny"),
                 ("cifar10_vae", ""), ("cifar10_vae", "ae")]
PRIOR_CONFIGS = [("mnist_prior", ""), ("mnist_prior", "attention"),
                 ("mnist_prior", "conditional"),
                 ("mnist_prior", "tiny"), ("mnist_pixelcnn", ""),
                 ("mnist_pixelcnn", "conditional"), ("mnist_pixelcnn", "cpu"),
                 ("cifar10_pixelcnn", ""), ("cifar10_pixelcnn", "conditional"),
                 ("mnist_vqvae2_prior", ""), ("mnist_vqvae2_prior", "top"),
                 ("mnist_vqvae2_prior", "bottom"), ("mnist_vqvae2_prior", "tiny"),
                 ("cifar10_vqvae2_prior", ""),
                 ("cifar10_vqvae2_prior", "conditional")]


@pytest.mark.parametrize("name,variant", VQVAE_CONFIGS)
def test_vqvae_configs_build(name, variant):
  config = load_config(name, variant)
  model = build.stage1(config, out_channels=3)
  expected = {"vq": ("top", "bottom") if config.model.top_downsamples
              else ("codes",), "ae": (), "vae": ()}[config.model.bottleneck]
  assert model.levels == expected
  if expected:
    assert model.num_codes == config.quantizer.num_codes
  assert build.resolve_kernels(config.model.kernels) in ("xla", "xla_cpu")
  assert config.train.batch_size > 0 and config.eval.batch_size > 0


@pytest.mark.parametrize("name,variant", PRIOR_CONFIGS)
def test_prior_configs_build(name, variant):
  config = load_config(name, variant)
  model = build.code_prior(config, num_values=256, num_channels=1,
                           num_classes=10)
  assert model.features == config.model.features
  # The class input holds the labels' classes or the clusters', and with
  # label dropout one more: "no label" (the last), for guidance.
  conditioned = bool(config.model.conditional or config.model.num_clusters)
  null = build.null_label(config, 10)
  assert model.num_classes == (10 + (null is not None) if conditioned else 0)
  assert null in (None, 10) and (null is None) == (not
                                                   config.model.label_dropout)
  assert not config.sample.guidance or null is not None


@pytest.mark.parametrize("name", ["mnist_vqvae", "mnist_prior",
                                  "mnist_pixelcnn", "mnist_vae",
                                  "mnist_vqvae2", "cifar10_vqvae2",
                                  "mnist_vqvae2_prior"])
def test_unknown_variant_is_an_error(name):
  with pytest.raises(ValueError, match="Unknown variant"):
    load_config(name, "no_such_variant")


def test_bad_dtype_and_kernels_are_one_clear_error():
  config = load_config("mnist_vqvae", "tiny")
  config.model.dtype = "float16"
  with pytest.raises(ValueError, match="model.dtype='float16' is not one of"):
    build.stage1(config, out_channels=1)
  with pytest.raises(ValueError, match="model.kernels='gpu' is not one of"):
    build.resolve_kernels("gpu")


def test_bad_bottleneck_is_one_clear_error():
  config = load_config("mnist_vqvae", "tiny")
  config.model.bottleneck = "gumbel"
  with pytest.raises(ValueError, match="model.bottleneck='gumbel' is not"):
    build.stage1(config, out_channels=1)
  config.model.bottleneck = "vae"
  config.model.top_downsamples = 1
  with pytest.raises(ValueError, match="needs model.bottleneck='vq'"):
    build.stage1(config, out_channels=1)
