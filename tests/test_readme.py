"""The README's Python examples run as written: every ```python block, in a
fresh interpreter with two CPU devices (so the functional example's `pmap`
really splits the batch), one after the other."""

import os
import re

from conftest import REPO, run_python


def test_readme_python_blocks_run(tmp_path):
  with open(os.path.join(REPO, "README.md")) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
  assert len(blocks) >= 2
  script = tmp_path / "readme_examples.py"
  script.write_text("\n\n".join(
      f"# --- README block {i}\n{block}" for i, block in enumerate(blocks)))
  result = run_python([str(script)], env={
      "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert result.returncode == 0, result.stderr[-3000:]
