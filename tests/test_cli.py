"""The command line as a whole: lazy subcommands, --version, python -m harness, --json listings, and the exit codes
of every command (README, "Exit codes"; run's 1 and 130/143/129 are in test_runner.py and test_signals.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import cli
from harness.exitcode import ExitCode
from harness.hookspecs import hookimpl


def test_help_imports_no_heavy_library_and_is_quick() -> None:
    probe = ("import sys, time; start = time.perf_counter(); from harness import cli\n"
             "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
             "heavy = [m for m in ('torch', 'pandas', 'scipy', 'numpy') if m in sys.modules]\n"
             "print(time.perf_counter() - start, heavy, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    seconds, heavy = done.stderr.split(" ", 1)
    assert heavy.strip() == "[]" and "run every cell of a suite" in done.stdout, done.stderr
    assert float(seconds) < 1.0  # measured 0.03-0.07 s of the harness's own on a loaded 2-core AMD EPYC


def test_version_and_python_dash_m() -> None:
    for command in ([sys.executable, "-m", "harness", "--version"], ["harness", "--version"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == ExitCode.OK, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith("harness 0.1.0 (Python ") and lines[1].startswith("torch 2."), done.stdout


def test_listings_print_json_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["suites", "--json"]) == ExitCode.OK
    suites = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert suites["flowers-smoke"]["cells"] > 0 and suites["flowers-smoke"]["error"] is None
    assert cli.main(["plugins", "--json"]) == ExitCode.OK
    plugins = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert plugins["local-executor"]["provides"] == ["executor local", "executor pool"]
    assert "register_executors" in plugins["ray-executor"]["hooks"]


def test_envs_list_json_and_unknown_environments_are_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HARNESS_ENVS", str(tmp_path / "envs"))
    assert cli.main(["envs", "list", "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["envs", "remove", "no-such-env"]) == ExitCode.USAGE
    assert "no environment 'no-such-env'" in capsys.readouterr().err
    assert cli.main(["envs", "build", "no-such-env"]) == ExitCode.USAGE
    assert "no environment 'no-such-env' to build" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["run", "--suite", "no-such-suite"], "unknown suite 'no-such-suite'"),
    (["report", "no-such-dir", "--out", "x"], "no-such-dir"),
    (["compare", "no-such-a", "no-such-b"], "no-such-a"),
    (["env", "--results", "no-such-dir"], "--results no-such-dir: no such result directory"),
    (["data", "prepare", "flowers", "--out", "x", "--max-members", "0"], "--max-members 0"),
])
def test_bad_input_exits_2_with_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_an_argument_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--suite", "x", "--executor", "nowhere"])
    assert exit_.value.code == ExitCode.USAGE and "invalid choice: 'nowhere'" in capsys.readouterr().err


class BrokenLoader:
    """A loader whose ``reads_data`` raises: a bug in a plugin, met by ``harness run`` in its own process."""

    def can_run(self, device: Any, params: Any) -> None:
        return None

    def build(self, spec: Any) -> Any:
        raise AssertionError("never built")

    @property
    def reads_data(self) -> bool:
        raise RuntimeError("a bug in the plugin")


class Broken:
    @staticmethod
    @hookimpl
    def register_loaders(register: Any) -> None:
        register("broken", BrokenLoader())


def test_an_internal_error_exits_3_in_one_line_and_traceback_shows_the_stack(
        harness_plugin: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    harness_plugin(Broken(), name="broken-plugin")
    suite = tmp_path / "suite.toml"
    suite.write_text('name = "s"\nepochs = 1\nimage_size = 32\nrecipe = "seed"\n[matrix]\nmodel = ["resnet10t"]\n'
                     'loader = ["broken"]\nbackend = ["torch"]\nprecision = ["fp32"]\n')
    assert cli.main(["run", "--suite", str(suite), "--out", str(tmp_path / "out")]) == ExitCode.INTERNAL
    err = capsys.readouterr().err
    assert err.strip() == ("harness: internal error: RuntimeError: a bug in the plugin (harness --traceback ... "
                           "shows where)")
    assert cli.main(["--traceback", "run", "--suite", str(suite), "--out", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in reads_data" in err


def test_quiet_hides_info_messages_verbose_shows_debug(capsys: pytest.CaptureFixture[str]) -> None:
    cli.configure_logging(-1)
    cli.log.getChild("runner").info("moved aside")
    cli.log.getChild("runner").warning("a torn line")
    assert capsys.readouterr().err == "harness: warning: a torn line\n"
    cli.configure_logging(0)
    cli.log.getChild("runner").info("moved aside")
    cli.log.getChild("envs.build").debug("asking")
    assert capsys.readouterr().err == "harness: moved aside\n"
    cli.configure_logging(1)  # -v
    cli.log.getChild("envs.build").debug("asking")
    assert capsys.readouterr().err == "harness: asking\n"
