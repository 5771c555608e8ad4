"""Errors before launch, from the command line: one line naming key and file, before any process starts."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "asyncflow_hpc", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


@pytest.mark.parametrize("verb", [("config", "show"), ("run", "--dry-run"), ("run",)])
def test_nonexistent_model_path_fails_before_launch(verb):
    p = cli(*verb[:1], *verb[1:2] if verb[0] == "config" else (), "configs/smoke.yaml", "model.path=/nonexistent",
            *verb[1:] if verb[0] == "run" else ())
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    line = p.stderr.strip()
    assert "\n" not in line and "configs/smoke.yaml: model.path='/nonexistent': no such directory" in line
    assert "launching" not in p.stdout


def test_overrides_after_flags():
    p = cli("run", "configs/smoke.yaml", "--dry-run", "topology.world_size=3")
    assert p.returncode == 0, p.stderr
    assert "mpiexec -n 3 " in p.stdout and p.stdout.strip().endswith("configs/smoke.yaml topology.world_size=3")
    p = cli("run", "configs/smoke.yaml", "--dry-run", "--bogus")
    assert p.returncode == 2 and "unrecognized arguments: --bogus" in p.stderr


def test_duplicate_keys_and_empty_file_are_errors(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("workflow:\n  eta: 1\n  eta: 2\n")
    p = cli("config", "show", str(dup))
    assert p.returncode == 2 and f"{dup}" in p.stderr and "duplicate key 'eta' (first at line 2)" in p.stderr
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    p = cli("run", str(empty), "--dry-run")
    assert p.returncode == 2 and p.stderr.strip().startswith(f"asyncflow-hpc: error: {empty}: the config file is empty")
