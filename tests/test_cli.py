"""The `easyedit-kne` command (easyedit_kne/cli.py) and `python -m easyedit_kne`: every subcommand is
registered, the pass-through commands hand their arguments to their own parsers untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from easyedit_kne import cli

REPO = Path(__file__).resolve().parent.parent
EXPECTED = {"knowedit", "compare", "localize", "bench-speed", "bench-eval", "hparams", "demo", "smollm2-path",
            "edit", "apply", "tune", "claims"}


def test_every_command_is_registered_by_its_own_function():
    _, sub = cli.build_parser()
    assert set(sub.choices) == EXPECTED
    for add in cli.COMMANDS:  # each add_*_parser registers one command (add_edit_parsers: edit and apply)
        parser = cli.argparse.ArgumentParser()
        one = parser.add_subparsers()
        add(one)
        assert len(one.choices) == (2 if add is cli.add_edit_parsers else 1)


def test_hparams_list_names_shipped_files(capsys):
    assert cli.main(["hparams", "list"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    names = {(alg, name) for alg, name, _ in rows}
    assert {("KNE", "llama-7b"), ("KNE", "smollm2-135m"), ("FiNE", "llama-7b")} <= names
    assert all(Path(path).is_file() for _, _, path in rows)
    assert cli.main(["hparams", "list", "--alg", "FiNE"]) == 0
    assert "KNE\t" not in capsys.readouterr().out


def test_python_dash_m_works_like_the_command():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "easyedit_kne", "hparams", "list", "--alg", "KNE"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "KNE\tllama-7b\t" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "easyedit_kne", "no-such-command"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_knowedit_passes_hydra_overrides_through(capsys):
    saved = list(sys.argv)
    assert cli.main(["knowedit", "--cfg", "job", "data.size=3", "method.hparams.p=7", "edit_mode=batch"]) == 0
    assert sys.argv == saved  # restored after Hydra read it
    out = capsys.readouterr().out
    assert "size: 3" in out and "p: 7" in out and "edit_mode: batch" in out


def test_compare_passes_arguments_through(tmp_path, capsys):
    assert cli.main(["compare", str(tmp_path), "--out-prefix", str(tmp_path / "cmp")]) == 1
    assert "no summary.json" in capsys.readouterr().err


def test_bench_speed_passes_arguments_through(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench-speed", "--help"])
    assert exit_info.value.code == 0 and "--quick" in capsys.readouterr().out


def test_every_passthrough_command_reaches_a_main_of_its_own():
    from importlib import import_module

    names = {name for name, _, _ in cli.PASSTHROUGH}
    assert names == {"knowedit", "compare", "bench-speed", "bench-eval", "claims"}
    _, sub = cli.build_parser()
    for name, module, _ in cli.PASSTHROUGH:
        assert sub.choices[name].get_default("passthrough") is not None
        if module is not None:
            assert callable(import_module(f"easyedit_kne.{module}").main), name
