"""The edgeloop command and the promise that the edge side never imports torch."""

from __future__ import annotations

import subprocess
import sys

import edgeloop
from edgeloop.cli import COMMANDS, main


def _edgeloop(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeloop", *args], capture_output=True, text=True, timeout=120)


def test_version():
    out = _edgeloop("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"edgeloop {edgeloop.__version__}"


def test_help_lists_built_commands():
    out = _edgeloop("--help")
    assert out.returncode == 0
    assert "COMMAND" in out.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: edgeloop" in capsys.readouterr().out


def test_every_command_module_has_configure_and_run():
    import importlib
    import importlib.util
    for name, (module, _extra, _help) in COMMANDS.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            continue
        if spec is None:
            continue
        mod = importlib.import_module(module)
        assert callable(mod.configure) and callable(mod.run), name


EDGE_IMPORTS = """
import sys, importlib, pkgutil
import protocol, agent
for m in pkgutil.walk_packages(agent.__path__, 'agent.'):
    importlib.import_module(m.name)
import edgeloop.cli, edgeloop.broker
heavy = sorted(m for m in ('torch', 'torchvision', 'fastapi', 'trainer') if m in sys.modules)
print(','.join(heavy))
"""


def test_edge_side_never_imports_torch_or_fastapi():
    out = subprocess.run([sys.executable, "-c", EDGE_IMPORTS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"agent side imported: {out.stdout.strip()}"
