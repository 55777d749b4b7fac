"""Data parallelism: N devices compute what one device computes."""

import json
import os
import textwrap

import numpy as np

from conftest import REPO, run_python

SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from conftest import load_config
    from flax import jax_utils
    from vqjax import data, parallel
    from vqjax.train.stage1 import Stage1Task

    assert jax.local_device_count() == 2, jax.devices()
    config = load_config("mnist_vqvae", "tiny")
    config.quantizer.kmeans_init = True
    config.quantizer.kmeans_iters = 3
    task = Stage1Task(config)
    batches = data.train_batches(task.train_data, 16, seed=0)
    steps = [next(batches) for _ in range(3)]
    state0 = task.create_train_state(jax.random.PRNGKey(0),
                                     {k: v[:1] for k, v in steps[0].items()})

    def run(devices):
      pmapped = lambda f: jax.pmap(f, axis_name=parallel.AXIS, devices=devices)
      shard = lambda b: jax.tree.map(
          lambda x: x.reshape((len(devices), -1) + x.shape[1:]), b)
      state = jax_utils.replicate(state0, devices=devices)
      state = pmapped(task.initialize)(state, shard(steps[0]))
      metrics = []
      for batch in steps:
        state, m = pmapped(task.train_step)(state, shard(batch))
        metrics.append(parallel.unreplicate(m))
      return parallel.unreplicate(state), metrics

    one, m1 = run(jax.devices()[:1])
    two, m2 = run(jax.devices()[:2])
    for name in ("params", "opt_state", "model_state"):
      a, b = getattr(one, name), getattr(two, name)
      flat_a = jax.tree_util.tree_leaves_with_path(a)
      flat_b = jax.tree_util.tree_leaves(b)
      for (path, x), y in zip(flat_a, flat_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4,
                                   atol=2e-5, err_msg=f"{name}{path}")
    for a, b in zip(m1, m2):
      for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-5, err_msg=k)
    assert m1[0]["codes_restarted"] >= 0

    # Dead codes restart from the same rows of the global batch on every
    # device as on one device holding the whole batch (all codes dead here).
    import jax.numpy as jnp
    from vqjax import quantizer as vq
    z = np.random.RandomState(0).randn(2, 10, 3).astype(np.float32)
    dead = vq.EMAState(codebook=jnp.zeros((6, 3)), cluster_size=jnp.zeros(6),
                       embed_sum=jnp.zeros((6, 3)), count=jnp.float32(1))
    restart = lambda z, axis: vq.restart_dead_codes(
        dead, z, jax.random.PRNGKey(5), 1.0, 0.99, axis)[0].codebook
    whole = restart(z.reshape(20, 3), None)
    per_device = jax.pmap(lambda z: restart(z, parallel.AXIS),
                          axis_name=parallel.AXIS)(z)
    assert len({tuple(r) for r in np.asarray(whole)}) > 1
    for codebook in per_device:
      np.testing.assert_array_equal(codebook, whole)
    try:
      parallel.check_divisible(15)
    except ValueError as e:
      assert "not divisible by the 2 devices" in str(e), e
    else:
      raise AssertionError("15 over 2 devices was accepted")
    print("EQUAL")
""")


def test_two_device_step_equals_one_device_step(mnist_dir):
  result = run_python(["-c", SCRIPT], env={
      "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
      "PYTHONPATH": REPO}, timeout=900)
  assert "EQUAL" in result.stdout, result.stdout + result.stderr[-3000:]


CPU_DEVICES_SCRIPT = textwrap.dedent("""
    import os, sys
    from vqjax.xla_cpu import process
    case = sys.argv[1]
    if case == "requested":
      assert process.use_cpu_cores_as_devices(3, (128,)) == 3
    elif case == "divides_batch":
      assert process.use_cpu_cores_as_devices(0, (1,)) == 1
    elif case == "per_core":
      cores = len(os.sched_getaffinity(0))
      assert process.use_cpu_cores_as_devices(0, ()) == cores
    elif case == "user_setting_wins":
      assert process.use_cpu_cores_as_devices(3, (128,)) == 0
    elif case == "after_start":
      import jax
      jax.devices()
      assert process.use_cpu_cores_as_devices(3, (128,)) == 0
    import jax
    print(jax.local_device_count(), process.reuse_freed_memory(),
          os.environ.get("XLA_FLAGS", "").replace(" ", ","))
""")


def _cpu_devices(case: str, **env) -> list[str]:
  """[device count, malloc tuned, XLA_FLAGS with ',' for spaces]."""
  clean = {"XLA_FLAGS": "", **env}
  result = run_python(["-c", CPU_DEVICES_SCRIPT, case], env=clean)
  assert result.returncode == 0, result.stderr[-2000:]
  return (result.stdout.split() + [""])[:3]


def test_cpu_devices_policy():
  """The scripts' CPU device count: as requested, one per core dividing the
  batch, and never overriding the user's own setting or a started backend."""
  assert _cpu_devices("requested")[0] == "3"
  assert _cpu_devices("divides_batch")[0] == "1"
  assert _cpu_devices("per_core")[0] == str(len(os.sched_getaffinity(0)))
  assert _cpu_devices("user_setting_wins", JAX_NUM_CPU_DEVICES="2")[0] == "2"
  assert _cpu_devices("user_setting_wins", XLA_FLAGS=(
      "--xla_force_host_platform_device_count=2"))[0] == "2"
  assert _cpu_devices("after_start")[0] == "1"


def test_one_thread_per_cpu_device_unless_the_user_says_otherwise():
  one_thread = "--xla_cpu_multi_thread_eigen=false"
  assert _cpu_devices("requested")[2] == one_thread
  assert _cpu_devices("divides_batch")[2] == ""  # one device: all threads
  own = "--xla_cpu_multi_thread_eigen=true"
  assert _cpu_devices("requested", XLA_FLAGS=own) == ["3", "True", own]


def test_malloc_setting_respects_opt_out():
  assert _cpu_devices("requested")[1] == "True"
  assert _cpu_devices("requested", VQJAX_DEFAULT_MALLOC="1")[1] == "False"
  assert _cpu_devices("requested", MALLOC_ARENA_MAX="4")[1] == "False"


def _train_tiny(workdir: str, devices: int, *overrides: str):
  return run_python(
      ["train_vqvae.py", "--config=configs/mnist_vqvae.py:tiny",
       f"--workdir={workdir}", "--config.train.batch_size=24",
       "--config.train.num_steps=2", "--config.eval.every=2",
       "--config.checkpoint.every=2", "--config.eval.batch_size=500",
       *overrides],
      env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"})


def test_any_device_count_evaluates_every_test_image_once(tmp_path, mnist_dir):
  """The same global batch of 24 on 1, 2, 3 and 8 devices, with an eval batch
  of 500 (which 3 and 8 do not divide): the runs finish (eval, checkpoint)
  and their test metrics over the whole split agree."""
  metrics = {}
  for devices in (1, 2, 3, 8):
    workdir = str(tmp_path / f"d{devices}")
    result = _train_tiny(workdir, devices)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
    metrics[devices] = [r for r in records if r["split"] == "test"][-1]
  for devices in (2, 3, 8):
    for key in ("mse", "nmse", "commitment_loss", "perplexity", "codes_used"):
      np.testing.assert_allclose(metrics[devices][key], metrics[1][key],
                                 rtol=1e-4, err_msg=f"{key}, {devices} devices")


def test_train_batch_not_dividing_the_devices_fails_before_loading(tmp_path):
  result = _train_tiny(str(tmp_path / "run"), 8, "--config.train.batch_size=20",
                       "--config.data.name=nonexistent")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert lines[-1] == ("error: Global batch size 20 is not divisible by the 8 "
                       "devices; set --config.train.batch_size to a multiple "
                       "of 8."), result.stderr[-2000:]
