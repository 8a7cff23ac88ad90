"""Warm processes: one interpreter per environment imports torch, torchvision, timm and the harness once, then
forks each cell's process (each rank of a multi-process cell: :mod:`harness.launch`) from that state, so a cell
starts in milliseconds instead of seconds of imports. The same fork server starts ``harness`` commands for
:func:`harness.testing.run_harness` (a test suite's hundred command lines would otherwise spend most of their time
importing).

A forked cell is the process a cold ``python -m harness.cell`` would be, minus the imports: a session and process
group of its own (the runner signals it with ``os.killpg``), the cell's environment variables and working
directory, its output on the pipe the runner reads, fresh Python and NumPy random states, torch's thread count as
a cold start sets it, and the cell's own exit path. The fork server (the *zygote*) is single-threaded and never
runs a tensor operation or touches a GPU, so no thread pool or CUDA context is forked. It dies with the runner,
and its cells die with it. Timings are unaffected: the engine times epochs inside the cell. A cell whose
environment variables differ from the zygote's in more than the per-cell ones starts cold, and so does every
cell when the setting :data:`harness.paths.WARM` is 0.

Protocol over a Unix socket pair: the runner sends one JSON line (module, argv, env, cwd) with the write ends of
the process's output pipes attached (SCM_RIGHTS: one for stdout and stderr together, or one each); the zygote
answers ``{"pid": N}``, later ``{"exit": N, "code": C}`` (C negative for a signal, as :class:`subprocess.Popen`
reports it).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Collection, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from harness.cell import die_with_parent
from harness.paths import PARENT_ENV, WARM, setting

#: Imported once by the zygote where the environment has them: what every cell imports anyway.
PRELOAD = ("torch", "torchvision", "timm", "harness.cell", "harness.engine", "harness.cli", "harness.suite")
#: What a fork may run: ``python -m MODULE ARGV``, as ``MODULE.main(argv)``.
MODULES = ("harness.cell", "harness.cli")
#: Variables read when the preloaded libraries are imported (the OpenMP runtime reads its own at load): a
#: command whose values differ from the zygote's starts cold, as do commands whose PYTHONPATH shadows them.
IMPORT_TIME = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONOPTIMIZE",
               "PYTHONDONTWRITEBYTECODE", "TORCH_", "PYTORCH_", "TIMM_")
#: Environment variables that may differ between the zygote and the cells it forks (set per cell by the runner;
#: read by libraries only after the cell starts, never at import).
PER_CELL = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                      "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TMPDIR", PARENT_ENV, "CUDA_VISIBLE_DEVICES",
                      "OMP_NUM_THREADS"})  # the thread count: fresh_process_state
READY = b"ready\n"
ZYGOTE_PATH: list[str] = []  # the zygote's sys.path without what its working folder and PYTHONPATH put first
REAP_S = 0.1  # how often the zygote looks for finished cells while no request comes


class Zygote:
    """The runner's side of one environment's fork server (``python -m harness.warm FD [TAG]``)."""

    def __init__(self, python: str, env: Mapping[str, str], tag: str = "") -> None:
        self.env = dict(env)
        self.sock, theirs = socket.socketpair()
        # ``tag`` (the run's output folder) only names the zygote in ps
        self.proc = subprocess.Popen([python, "-m", "harness.warm", str(theirs.fileno()), tag], env=self.env,
                                     pass_fds=[theirs.fileno()], start_new_session=True)
        theirs.close()
        self.lines = self.sock.makefile("rb")
        self.lock = threading.Lock()  # one request at a time: an executor may start cells from several threads
        self.started: queue.Queue[WarmProcess | None] = queue.Queue()
        self.running: dict[int, WarmProcess] = {}
        if self.lines.readline() != READY:
            self.close()
            raise OSError(f"the warm interpreter {python} did not start")
        threading.Thread(target=self.read, daemon=True).start()

    def serves(self, env: Mapping[str, str], module: str = "harness.cell") -> bool:
        """Whether ``python -m MODULE`` with ``env`` may be forked from this zygote: a cell needs the same variables
        but the per-cell ones; a command, the same import-time ones and no PYTHONPATH entry shadowing a preloaded
        package."""
        if self.proc.poll() is not None:
            return False
        if module == "harness.cell":
            def common(e: Mapping[str, str]) -> dict[str, str]:
                return {k: v for k, v in e.items() if k not in PER_CELL}
            return common(env) == common(self.env)

        def imported(e: Mapping[str, str]) -> dict[str, str]:
            return {k: v for k, v in e.items() if k.startswith(IMPORT_TIME)}
        preloaded = {name.split(".")[0] for name in PRELOAD} | {"harness_plugins"}
        shadowed = any(Path(entry, name).exists() for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry
                       for name in preloaded)
        return not shadowed and imported(env) == imported(self.env)

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], module: str = "harness.cell",
              separate_stderr: bool = False, text: bool = True, cpus: Collection[int] = ()) -> WarmProcess:
        """Fork a process that runs ``MODULE.main(argv)`` (:data:`MODULES`), pinned to ``cpus`` if given, output
        on its ``stdout`` (and ``stderr`` with ``separate_stderr``): bytes, or text decoded with replacement."""
        pipes = [os.pipe() for _ in range(2 if separate_stderr else 1)]
        try:
            with self.lock:
                request = json.dumps({"module": module, "argv": list(argv), "env": dict(env), "cwd": os.getcwd(),
                                      "fds": len(pipes), "cpus": sorted(cpus)})
                socket.send_fds(self.sock, [request.encode() + b"\n"], [write for _, write in pipes])
                process = self.started.get()
        finally:
            for _, write in pipes:
                os.close(write)
        if process is None:
            for read, _ in pipes:
                os.close(read)
            raise OSError("the warm interpreter exited")
        process.stdout, *rest = (os.fdopen(read, "r", encoding="utf-8", errors="replace") if text else
                                 os.fdopen(read, "rb") for read, _ in pipes)
        process.stderr = rest[0] if rest else None
        return process

    def read(self) -> None:
        """Dispatch the zygote's messages: a forked cell's pid, a finished cell's exit code."""
        with suppress(OSError, ValueError):
            for line in self.lines:
                message = json.loads(line)
                if "pid" in message:
                    self.running[message["pid"]] = process = WarmProcess(message["pid"])
                    self.started.put(process)
                else:
                    self.running.pop(message["exit"]).finish(message["code"])
        for process in self.running.values():  # the zygote died, and its cells with it (PR_SET_PDEATHSIG)
            process.finish(-signal.SIGKILL)
        self.started.put(None)

    def close(self) -> None:
        """Stop the zygote (its cells die with it)."""
        with suppress(OSError):
            self.sock.close()
        with suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()


class WarmProcess:
    """The part of :class:`subprocess.Popen` the runner uses, for a cell forked by a :class:`Zygote`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdout: IO[Any] | None = None
        self.stderr: IO[Any] | None = None
        self.done = threading.Event()

    def finish(self, code: int) -> None:
        self.returncode = code
        self.done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self.done.wait(timeout):
            raise subprocess.TimeoutExpired(f"process {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        """Read both outputs to their end and wait, as :meth:`subprocess.Popen.communicate` does."""
        texts: dict[str, str] = {}
        readers = [threading.Thread(target=lambda n=name, f=stream: texts.__setitem__(n, f.read()), daemon=True)
                   for name, stream in (("stdout", self.stdout), ("stderr", self.stderr)) if stream is not None]
        for reader in readers:
            reader.start()
        self.wait(timeout)
        for reader in readers:
            reader.join()
        return texts.get("stdout", ""), texts.get("stderr")


class Launcher:
    """Starts cell processes: forked from a warm zygote per interpreter where possible, else cold."""

    def __init__(self, warm: bool = True, tag: str = "", zygote_env: Mapping[str, str] | None = None) -> None:
        """``tag`` names the zygotes in ps; ``zygote_env``: their environment (default: the first process's)."""
        self.warm = warm and sys.platform.startswith("linux") and setting(WARM, "1") != "0"
        self.tag = tag
        self.zygote_env = zygote_env
        self.zygotes: dict[str, Zygote] = {}
        self.lock = threading.Lock()

    def start(self, python: str, argv: Sequence[str], env: Mapping[str, str], module: str = "harness.cell",
              separate_stderr: bool = False, text: bool = True, cpus: Collection[int] = ()) -> Any:
        """``python -m MODULE ARGV`` in a session of its own, pinned to ``cpus`` if given; its output (stdout and
        stderr together, or apart with ``separate_stderr``) on ``.stdout`` (and ``.stderr``): text decoded with
        replacement, or bytes. A :class:`subprocess.Popen` or a :class:`WarmProcess`."""
        zygote = self.zygote(python, env, module) if self.warm else None
        if zygote is not None:
            with suppress(OSError):
                return zygote.spawn(argv, env, module, separate_stderr, text, cpus)
        return start_cold(python, argv, env, module, separate_stderr, text, cpus)

    def zygote(self, python: str, env: Mapping[str, str], module: str) -> Zygote | None:
        with self.lock:
            zygote = self.zygotes.get(python)
            if zygote is None or zygote.proc.poll() is not None:
                try:
                    zygote = self.zygotes[python] = Zygote(python, self.zygote_env or env, self.tag)
                except OSError:
                    return None
            return zygote if zygote.serves(env, module) else None

    def close(self) -> None:
        with self.lock:
            for zygote in self.zygotes.values():
                zygote.close()
            self.zygotes.clear()


def start_cold(python: str, argv: Sequence[str], env: Mapping[str, str], module: str = "harness.cell",
               separate_stderr: bool = False, text: bool = True, cpus: Collection[int] = ()) -> subprocess.Popen:
    """:meth:`Launcher.start` without a zygote: a fresh ``python -m MODULE ARGV``."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.Popen([python, "-m", module, *argv], env=dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if separate_stderr else subprocess.STDOUT, text=text,
                            errors="replace" if text else None, start_new_session=True, preexec_fn=pin)


# -- the zygote's side ---------------------------------------------------------------------------------------------
def serve(fd: int) -> None:
    """Preload, then fork one cell per request until the runner closes the socket or dies."""
    die_with_parent()
    # Python 3.12+ warns on fork() in a process with threads: torch's import starts one idle native thread, and
    # DataLoader workers fork from far busier processes every epoch.
    warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning)
    for name in PRELOAD:
        with suppress(ImportError):
            importlib.import_module(name)
    with suppress(ImportError):  # set up while argv and environ are as exec left them, so forks can retitle
        import setproctitle

        setproctitle.setproctitle(" ".join(sys.orig_argv))
    own = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    ZYGOTE_PATH[:] = [p for p in sys.path[1:] if p not in own]  # less its working folder and PYTHONPATH
    sock = socket.socket(fileno=fd)
    sock.sendall(READY)
    children: set[int] = set()
    buffer, outputs = b"", list[int]()
    while True:
        if select.select([sock], [], [], REAP_S)[0]:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 8)
            if not data:
                break
            buffer, outputs = buffer + data, outputs + fds
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                fds, outputs = outputs[:request.get("fds", 1)], outputs[request.get("fds", 1):]
                pid = os.fork()
                if pid == 0:
                    sock.close()
                    run_main(request, fds)
                for fd in fds:
                    os.close(fd)
                children.add(pid)
                sock.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                sock.sendall(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
    for pid in children:
        with suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def run_main(request: dict[str, Any], outputs: list[int]) -> None:
    """In the forked child: become the process a cold ``python -m MODULE ARGV`` would be, run it and exit."""
    from harness import cell

    code = 1
    try:
        os.setsid()
        if request.get("cpus"):
            os.sched_setaffinity(0, request["cpus"])
        os.dup2(outputs[0], 1)
        os.dup2(outputs[-1], 2)
        for fd in outputs:
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        module = request["module"]
        if module not in MODULES:
            raise ValueError(f"the warm interpreter runs {', '.join(MODULES)}, not {module}")
        if module == "harness.cell":  # a cell dies with its parent: the zygote, which dies with the runner
            os.environ[PARENT_ENV] = str(os.getppid())
        os.chdir(request["cwd"])
        fresh_process_state()
        sys.argv = [sys.executable, "-m", module, *request["argv"]]
        if "setproctitle" in sys.modules:  # ps and /proc show the command line a cold start would have
            sys.modules["setproctitle"].setproctitle(" ".join(sys.argv))
        code = importlib.import_module(module).main(request["argv"])
        if module != "harness.cell":  # a command ends as an interpreter does: threads joined, atexit run
            threading._shutdown()  # type: ignore[attr-defined]
            atexit._run_exitfuncs()
    except SystemExit as exc:  # argparse errors, sys.exit in a plugin or a command
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        cell.exit_now(code or 0)


def fresh_process_state() -> None:
    """What a cold interpreter starts with: the working folder and ``PYTHONPATH`` first on ``sys.path``, unseeded
    random states, no cached temporary folder, and torch's intra-op thread count for this process's CPUs
    (``OMP_NUM_THREADS`` or the CPUs it may run on)."""
    import random
    import tempfile

    importlib.invalidate_caches()  # modules the tests wrote since the zygote started
    extra = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    sys.path[:] = [os.getcwd(), *extra, *(p for p in ZYGOTE_PATH if p not in extra)]
    tempfile.tempdir = None
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        wanted = os.environ.get("OMP_NUM_THREADS")
        threads = int(wanted) if wanted and wanted.isdigit() else len(os.sched_getaffinity(0))
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
