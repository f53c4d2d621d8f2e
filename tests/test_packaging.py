"""The edge install is light: `pip install '.[agent]'` brings no torch and no web stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_agent_extra_installs_without_torch(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # A non-editable install from a copy-free build, as a device would get it.
    out = subprocess.run([str(py), "-m", "pip", "install", "--quiet", f"{ROOT}[agent]"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout.lower()
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert {"onnxruntime", "opencv-python-headless", "paho-mqtt", "numpy"} <= names
    assert not names & {"torch", "torchvision", "fastapi", "uvicorn", "onnxruntime-gpu"}, names
    check = subprocess.run([str(py), "-c", "import agent, protocol, sys; "
                            "print('torch' in sys.modules)"], capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "False"
    cli = subprocess.run([str(venv / "bin" / "edgeloop"), "--version"], capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.startswith("edgeloop ")
    # The agent benchmark is for edge devices too: it must run without onnx, torch or the web stack.
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        video = tmp_path / "clip.avi"
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from bench.agent import "
                        "make_video; make_video(Path(sys.argv[1]), 30)", str(video)], check=True, cwd=ROOT)
        bench = subprocess.run([str(venv / "bin" / "edgeloop"), "bench", "agent", "--video", str(video),
                                "--frames", "30", "--repeats", "1"], capture_output=True, text=True, cwd=tmp_path,
                               env={**os.environ, "PATH": f"/usr/sbin:{os.environ.get('PATH', '')}"}, timeout=300)
        assert bench.returncode == 0, bench.stderr[-3000:]
        assert '"sent_and_receipted"' in bench.stdout
