"""Starting, watching and stopping one cell's processes on this machine: their command lines, environment,
temporary folder and output. The local executors (:mod:`harness_plugins.local_executor`) and a Ray node
(:mod:`harness.fleet`) start cells through it; what the outcome is, the runner decides.

A multi-process cell started with a :class:`~harness.warm.Launcher` (the local executors) on one node is a
*gang*: its ranks are forked from the environment's warm interpreter with the variables torchrun would give them,
and watched here as torchrun's agent would watch them (one rank failing stops the others). Without a launcher (a
Ray node, which may join a multi-node rendezvous) ``python -m harness.cell --nproc N`` starts them under torchrun."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from harness import warm
from harness.api import CellExit, CellSpec
from harness.envs.layers import activated
from harness.paths import PARENT_ENV

GRACE_S = 10.0  # a signalled cell's process group gets this long to exit before SIGKILL
SCRATCH = "harness-cell-"  # prefix of the per-cell temporary folders (the cell's TMPDIR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nodes(cell: CellSpec) -> int:
    """How many nodes the cell spans: its backend table's ``nnodes`` (``nproc`` ranks on each), 1 by default."""
    return int(cell.backend_params.get("nnodes", 1))


def cell_args(cell_json: Path, out: Path, nproc: int, resume: bool, launch: Sequence[str] = (),
              until: int | None = None) -> list[str]:
    """The arguments of ``python -m harness.cell`` (with ``nproc > 1`` it starts the ranks through torchrun,
    in-process; ``launch`` adds its multi-node options, e.g. ``--nnodes=2 --rdzv-endpoint=HOST:PORT``; ``until``
    stops it after that epoch, a race's rung)."""
    return [str(cell_json), "--out", str(out), f"--nproc={nproc}", *launch, *(["--resume"] if resume else []),
            *([f"--until={until}"] if until else [])]


def cell_env(nproc: int, python: str = sys.executable) -> dict[str, str]:
    """The cell's process environment: ``python``'s environment activated when it is not the runner's, and for
    single-process cells the rendezvous variables torchrun would set, so backends need no special case."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{PARENT_ENV: str(os.getpid())})
    if python != sys.executable:
        env = activated(Path(python).parent.parent, env)
    # Loader threads and workers share the CPU with torch's OpenMP threads; spinning OpenMP threads
    # then starve them (measured here: a DALI cell at 4 img/s spinning vs 35 img/s passive).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if nproc == 1:
        env.update(rank_env(0, 1, free_port()))
    return env


def rank_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    """The variables torchrun ``--standalone --nproc_per_node=NPROC`` gives rank ``rank`` on one node."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
            "GROUP_RANK": "0", "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port)}


def relay(stream: Iterable[bytes], tail: deque[str], prefix: str = "") -> None:
    """Echo the cell's output above the progress bars, keeping its last lines for a failure reason. Bytes that
    are not UTF-8 are replaced, never fatal: a relay that died would leave the pipe to fill and the cell blocked."""
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        tqdm.write(prefix + line)


def sweep(tmp: Path, prefix: str) -> None:
    """Remove the folders ``tmp/PREFIX*`` whose owner process (the pid in their ``.pid``) is gone: a runner or a
    Ray worker killed outright (SIGKILL) could not remove them itself."""
    for folder in tmp.glob(prefix + "*"):
        try:
            os.kill(int((folder / ".pid").read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):  # not ours to judge (another user's, or being created)
            continue


def scratch_folder() -> str:
    """A fresh per-cell temporary folder naming its owner (this process), after sweeping orphaned ones.

    A folder of its own, removed afterwards: libraries' leftovers (DALI's autograph writes
    /tmp/__autograph_generated_file*.py, ~50 per cell) go with it. Short: DataLoader workers put Unix sockets
    under it (pymp-*/listener-*), whose paths may not exceed 107 bytes; a long name under a deep TMPDIR made
    workers fail and the cell hang."""
    sweep(Path(tempfile.gettempdir()), SCRATCH)
    folder = tempfile.mkdtemp(prefix=SCRATCH)
    Path(folder, ".pid").write_text(str(os.getpid()))
    return folder


def kill_groups(procs: Iterable[subprocess.Popen[bytes] | warm.WarmProcess], signum: int) -> None:
    """Send ``signum`` to each process's group (session), those already gone skipped."""
    for proc in procs:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signum)


@dataclass
class CellProcess:
    """A cell's processes (one, torchrun's agent, or a gang of ranks), each in a session of its own: the runner's
    signals reach each whole group (cell or torchrun, loader workers), the terminal's Ctrl-C only the runner,
    which forwards it."""

    procs: Sequence[subprocess.Popen[bytes] | warm.WarmProcess]
    scratch: str
    readers: list[threading.Thread]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    signalled_at: float | None = None
    failed: int | None = None  # the first non-zero exit code among a gang's ranks

    @classmethod
    def start(cls, cell: CellSpec, cell_json: Path, out: Path, resume: bool, python: str = sys.executable,
              launch: Sequence[str] = (), cpus: Collection[int] = (), env: Mapping[str, str] | None = None,
              prefix: str = "", launcher: warm.Launcher | None = None, until: int | None = None) -> CellProcess:
        """Start ``cell`` (``cpus``: pin it to these CPUs; ``env``: variables to add; ``prefix``: before each
        line it prints; ``launcher``: fork its processes from a warm interpreter where it can, a multi-process
        cell's ranks as a gang, else a cold start; ``until``: stop after that epoch, a race's rung)."""
        for log in cell_json.parent.glob("error-rank*.log"):  # an earlier attempt's: not this one's cause
            log.unlink()
        scratch = scratch_folder()
        ranks = cell.nproc * nodes(cell)
        environ = {**cell_env(ranks, python), "TMPDIR": scratch, **(env or {})}
        if launcher is None or nodes(cell) > 1:  # torchrun: a Ray node's cell may join a multi-node rendezvous
            procs = [warm.start_cold(python, cell_args(cell_json, out, cell.nproc, resume, launch, until), environ,
                                     text=False, cpus=cpus)]
        else:
            argv, port = cell_args(cell_json, out, 1, resume, until=until), free_port()
            # torchrun's default too: one OpenMP thread per rank unless the environment says otherwise
            gang = [{**environ, "OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS", "1"), **rank_env(r, ranks, port)}
                    for r in range(ranks)] if ranks > 1 else [environ]
            procs = []
            try:
                for rank_environ in gang:
                    procs.append(launcher.start(python, argv, rank_environ, text=False, cpus=cpus))
            except BaseException:
                kill_groups(procs, signal.SIGKILL)
                raise
        tail: deque[str] = deque(maxlen=20)
        readers = [threading.Thread(target=relay, args=(proc.stdout, tail, prefix), daemon=True) for proc in procs]
        for reader in readers:
            reader.start()
        return cls(procs, scratch, readers, tail)

    def poll(self) -> CellExit | None:
        """None while a process runs (SIGKILLing the groups ``GRACE_S`` after a signal; SIGTERMing a gang's other
        ranks when one fails), else how the cell ended: the first failure's exit code, else 0."""
        codes = [proc.poll() for proc in self.procs]
        if self.failed is None:
            self.failed = next((code for code in codes if code), None)
        if None in codes:
            if self.signalled_at is not None and time.monotonic() - self.signalled_at > GRACE_S:
                self.kill(signal.SIGKILL)
            elif self.failed is not None and self.signalled_at is None:
                self.signal(signal.SIGTERM)  # one rank failed: the others would wait for it in a collective
            return None
        if self.signalled_at is not None:
            self.kill(signal.SIGKILL)  # what is left of the groups (loader workers)
        for reader in self.readers:
            reader.join(timeout=GRACE_S)  # orphaned loader workers may hold the pipe open a little longer
        shutil.rmtree(self.scratch, ignore_errors=True)
        return CellExit(self.failed or 0, list(self.tail))

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the groups; :meth:`poll` SIGKILLs what is left ``GRACE_S`` later."""
        self.kill(signum)
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()

    def kill(self, signum: int) -> None:
        kill_groups(self.procs, signum)

    def wait(self, every: float = 0.5) -> CellExit:
        while (ended := self.poll()) is None:
            time.sleep(every)
        return ended
