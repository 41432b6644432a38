"""The package works outside its checkout: a wheel built from the repository, installed into a new
virtualenv, runs a subset run on the synthetic profile from an unrelated folder (profiles ship as
package data)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]


def test_a_wheel_in_a_new_virtualenv_runs_the_synthetic_profile_anywhere(tmp_path):
    wheels, venv, elsewhere, source = (tmp_path / name for name in ("wheels", "venv", "elsewhere", "source"))
    elsewhere.mkdir()
    shutil.copytree(REPO / "transfer_core", source / "transfer_core", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):  # built from a copy: the build writes nothing into the checkout
        shutil.copy(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(wheels), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("transfer_core-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                                "-q", "--no-deps", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]

    # The dependencies (torch, mlflow, ...) come from this environment's site-packages on PYTHONPATH, whose
    # .pth files (this checkout's editable install among them) are not read: transfer_core is the wheel's.
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    env.update(PYTHONPATH=sysconfig.get_paths()["purelib"], TRANSFER_CORE_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import transfer_core; print(transfer_core.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    done = subprocess.run([str(venv / "bin" / "transfer-core"), "subset-run", "--profile", "synthetic", "--set",
                           "pretrain.epochs=1,transfer.epochs=2"], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = done.stdout.split()[1]
    client = MlflowClient(f"sqlite:///{elsewhere / 'mlruns' / 'mlflow.db'}")  # the embedded store, where it ran
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["data.source"] == "synthetic-source"
    assert run.info.artifact_uri.startswith((elsewhere / "mlruns").as_uri())  # artifacts beside the store
