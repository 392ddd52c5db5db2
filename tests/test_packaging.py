"""A non-editable install works from any folder: recipes, the bundled demo excerpt and the C++ source ship inside
the package.

The wheel is built from this checkout and installed with `pip install --target` into a temporary folder, which is put
first on PYTHONPATH; the test then runs the verbs from another temporary folder, so nothing in the checkout can be
found by accident (the test checks that `dna_mdlm` is imported from the installed copy). The dependencies come
from the current environment, which keeps the test to seconds instead of a full virtual environment's install.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_built_wheel_runs_a_recipe_on_the_bundled_data_from_another_folder(tmp_path):
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(wheels)], check=True,
                   capture_output=True)
    (wheel,) = wheels.glob("dna_mdlm-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "DNA_MDLM_SCAN": "blocked", "OMP_NUM_THREADS": "1",
           "DNA_MDLM_CACHE": str(tmp_path / "cache")}
    where = subprocess.run([sys.executable, "-c", "import dna_mdlm; print(dna_mdlm.__file__)"], cwd=elsewhere, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(site), where
    proc = subprocess.run([sys.executable, "-m", "dna_mdlm.cli", "pretrain", "--config", "tiny", "--out", "run",
                           "--max-steps", "3", "--set", "trainer.val_every=3", "--set", "trainer.progress_bar=false"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (elsewhere / "run" / "model" / "model.safetensors").is_file()
    assert "chr20_demo.fa.gz" in (elsewhere / "run" / "run_config.json").read_text()  # the bundled default data
