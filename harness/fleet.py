"""The Ray executor: a suite's cells as Ray tasks across a fleet of machines (``harness run --executor ray``).

Each cell becomes one task (one per node for a multi-node cell) that asks for what the cell needs: ``nproc``
CPUs, ``nproc`` GPUs when it trains on CUDA, and a sliver of the device kind's resource
(``accelerator_type:T4``, which Ray detects on GPU nodes, or a custom node resource such as ``T4``). On the
node the task does what the local executor does, with the same code: it places the cell in its environment
(:class:`harness.envs.placement.Placer`, so capability is judged on the node) and starts the same cell process
(:class:`harness.launch.CellProcess`) into a node-local folder. It is a streaming generator: it yields the cell's
files as they change, and the driver writes them into ``OUT/cells/<id>/``, the layout of a local run, so
``harness report``, ``compare`` and ``--resume`` work unchanged. The runner (:mod:`harness.runner`) decides and
records every outcome, retries and time limits; this module only launches and watches. The cell process records
the node in its fingerprint (``fleet_kind``, ``fleet_node``; :func:`harness.envinfo.fleet`).

A cell whose node is lost is reported lost; the runner runs it again on another node of its kind (from its last
checkpoint when one came home), up to ``retries`` times, then records it ``failed`` naming the nodes. A kind no
node offers is reported (its cells skipped), never waited for. A cancelled cell (Ctrl-C / SIGTERM, a time limit)
has its tasks cancelled: the worker is killed, and the cell process and its ranks die with it.

A multi-node cell (backend parameter ``nnodes``) reserves its nodes together, a placement group with one
bundle per node (STRICT_SPREAD), and each node's torchrun joins a c10d rendezvous hosted by node 0; whichever
node holds global rank 0 writes the results.

Data: ``--data`` is a path every node sees (a shared filesystem), or with ``data_copy`` it is packed once,
put into Ray's object store and unpacked once per node into ``~/.cache/harness/fleet-data/<digest[:32]>/<name>/``,
every file checked against the driver's SHA-256 manifest.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import re
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness import envinfo, launch, paths, results
from harness.api import CellExit, CellSpec, ExecutorError
from harness.launch import CellProcess, nodes
from harness.plugins import Manager
from harness.store import CellStore, write_bytes

INSTALL_HINT = "the Ray executor needs Ray: pip install 'harness[ray]' (or pip install 'ray>=2.9')"
KIND_SLIVER = 0.001  # of a kind's resource per task: the kind selects nodes, CPUs and GPUs limit how many run
MIRRORED_SKIP = ("cell.json",)  # the driver writes its own (a node may see another data path)
CHECKPOINT = "checkpoint.pt"
NODE_FOLDER = "harness-fleet-"  # the node-local folder a task runs its cell into, in the node's temp dir
POLL_S = 0.5  # how often a node sends its cell's changed files home
SLOTS = 1 << 20  # cells submitted at once: all of them; Ray queues each task until a node has its resources


class Cancelled(Exception):
    """The runner cancelled the cell (a signal, a time limit) while it was being launched or ran."""


class FleetError(ExecutorError):
    """The fleet cannot be used as asked (Ray missing, no cluster at the address); exit code 2."""


def require_ray() -> Any:
    """The ``ray`` module, or :class:`FleetError` with the install hint."""
    try:
        import ray
    except ImportError:
        raise FleetError(INSTALL_HINT) from None
    return ray


def per_kind(cells: Sequence[CellSpec], kinds: Sequence[str]) -> tuple[list[CellSpec], dict[str, str]]:
    """The suite once per device kind (ids ``ID-KIND``, so one ``--out`` holds all), and each cell's kind."""
    if not kinds:
        return list(cells), {}
    out, kind_of = [], {}
    for kind in kinds:
        for cell in cells:
            each = replace(cell, id=f"{cell.id}-{re.sub(r'[^A-Za-z0-9_.+-]', '_', kind)}")
            out.append(each)
            kind_of[each.id] = kind
    return out, kind_of


# ---------------------------------------------------------------- data on the nodes


@dataclass(frozen=True)
class DataCopy:
    """A data folder to copy once per node: its SHA-256 manifest and an object-store reference to a tar of it."""

    name: str
    manifest: Mapping[str, str]  # relative path -> sha256
    archive: Any  # ray.ObjectRef[bytes]

    @property
    def digest(self) -> str:
        text = "\n".join(f"{path} {sha}" for path, sha in sorted(self.manifest.items()))
        return hashlib.sha256(text.encode()).hexdigest()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(root: Path) -> tuple[dict[str, str], bytes]:
    """``root``'s regular files: their SHA-256 manifest and an uncompressed tar of them."""
    manifest, buffer = {}, io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            rel = path.relative_to(root).as_posix()
            manifest[rel] = sha256(path)
            tar.add(path, arcname=rel, recursive=False)
    return manifest, buffer.getvalue()


def unpack(copy: DataCopy, ray: Any) -> Path:
    """The node's verified copy of ``copy``: made once per node (a file lock serialises the node's cells)."""
    target = paths.fleet_cache() / copy.digest[:32] / copy.name
    marker = target.parent / "verified"
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent.with_suffix(".lock")).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
        try:
            with tarfile.open(fileobj=io.BytesIO(ray.get(copy.archive)), mode="r") as tar:
                if hasattr(tarfile, "data_filter"):  # Python 3.10.12+: refuse members leaving ``tmp``
                    tar.extractall(tmp, filter="data")
                else:  # the checksums below still refuse anything not in the driver's manifest
                    tar.extractall(tmp)
            found = {p.relative_to(tmp).as_posix(): sha256(p) for p in tmp.rglob("*") if p.is_file()}
            bad = sorted(k for k in set(found) | set(copy.manifest) if found.get(k) != copy.manifest.get(k))
            if bad:
                raise FleetError(f"the copy of {copy.name} on this node differs from the driver's in {len(bad)} "
                                 f"file(s), e.g. {bad[0]} (checksum mismatch)")
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
            marker.write_text(copy.digest + "\n")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------- on the node


def node_identity(ray: Any) -> dict[str, str]:
    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname()}


def endpoint() -> tuple[str, int]:
    """This node's address and a port free on it: the rendezvous of a multi-node cell (run on its node 0)."""
    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        port = int(s.getsockname()[1])
    return ray.util.get_node_ip_address(), port


def changes(root: Path, seen: dict[str, tuple[int, int]]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The cell's files changed since ``seen``: ``("files", {path: bytes})``, or ``("checkpoint", {...})``
    with the whole checkpoint folder, which the driver rotates in as a unit. Temporary files are not sent."""
    if not root.exists():
        return
    checkpoint_changed, files = False, {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in MIRRORED_SKIP or any(part.startswith(".") or part.endswith((".tmp", ".old"))
                                       for part in rel.split("/")):
            continue
        with suppress(FileNotFoundError):  # rotated away meanwhile: the next poll sends the new one
            stat = path.stat()
            if seen.get(rel) == (stat.st_size, stat.st_mtime_ns):
                continue
            if rel.startswith(CHECKPOINT + "/"):
                checkpoint_changed = True
                continue
            files[rel] = path.read_bytes()
            seen[rel] = (stat.st_size, stat.st_mtime_ns)
    if checkpoint_changed:
        checkpoint, folder = {}, root / CHECKPOINT
        with suppress(FileNotFoundError):
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                stat = path.stat()
                checkpoint[path.relative_to(folder).as_posix()] = path.read_bytes()
                seen[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
            yield "checkpoint", checkpoint
    if files:
        yield "files", files


def sweep(tmp: Path) -> None:
    """Remove node folders whose task's worker is gone: a force-cancelled task (Ctrl-C on the driver, a lost
    driver) is killed before its ``finally`` can."""
    launch.sweep(tmp, NODE_FOLDER)


def node_cell(cell_data: dict[str, Any], kind: str | None, resume: bool, seed: dict[str, bytes],
              options: list[str], data: DataCopy | None, build: bool, hint: str,
              until: int | None = None) -> Iterator[tuple[str, Any]]:
    """The Ray task: place and run one cell (or one node's share of it, ``options``: its multi-node options)
    here, yielding its files as they change.

    Yields ``("node", identity)`` first, ``("env", fingerprint)``, then ``("files" | "checkpoint",
    {path: bytes})`` as they change, and last ``("exit", {"code": int, "tail": [lines]})``, with ``"skipped":
    reason`` where the cell cannot run on this node.
    """
    import ray

    from harness.envs.placement import Placer
    from harness.plugins import get_manager

    identity = node_identity(ray)
    yield "node", identity
    cell = CellSpec.from_dict(cell_data)
    fleet = {paths.FLEET_KIND: kind or "", paths.FLEET_NODE: f"{identity['ip']} {identity['node_id'][:12]}"}
    # Ray gives a task OMP_NUM_THREADS = its CPUs; the cell's ranks share them (torchrun alone would give each 1).
    threads = max(1, int(os.environ.get("OMP_NUM_THREADS") or cell.nproc) // cell.nproc)
    saved = {key: os.environ.get(key) for key in (*fleet, "OMP_NUM_THREADS")}
    os.environ.update({key: value for key, value in fleet.items() if value}, OMP_NUM_THREADS=str(threads))
    sweep(Path(tempfile.gettempdir()))
    root = Path(tempfile.mkdtemp(prefix=NODE_FOLDER))
    (root / ".pid").write_text(str(os.getpid()))
    try:
        if data is not None:
            cell = replace(cell, data=str(unpack(data, ray)))
        place = Placer([cell], get_manager(), build, hint, log=print).place(cell)
        env = dict(place.env)
        yield "env", env
        store = CellStore(root, cell.id)
        for rel, blob in seed.items():
            write_bytes(store.dir / rel, blob)
        store.write_cell(cell)
        reason = place.blocker
        if not reason and cell.data and not Path(cell.data).exists():
            reason = (f"--data {cell.data} does not exist on node {identity['ip']}: use a shared filesystem "
                      "mounted at the same path on every node, or --data-copy")
        if reason or place.python is None:  # the runner records it skipped
            yield "exit", {"code": 0, "tail": [], "skipped": reason}
            return
        process = CellProcess.start(cell, store.dir / "cell.json", root, resume, place.python, options, until=until)
        seen: dict[str, tuple[int, int]] = {}
        while (ended := process.poll()) is None:
            time.sleep(POLL_S)
            yield from changes(store.dir, seen)
        yield from changes(store.dir, seen)
        yield "exit", {"code": ended.code, "tail": list(ended.tail)}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- on the driver


class NodeLost(Exception):
    """A node (or its worker) died under a cell: Ray raised a system error, not the cell's own."""

    def __init__(self, node: str, error: BaseException) -> None:
        super().__init__(f"node {node} lost ({type(error).__name__}: {str(error).splitlines()[0][:200]})")
        self.node = node


@dataclass
class Attempt:
    """One try of a cell (up to epoch ``until``: a race's rung): the nodes it ran on, whether rank 0's result
    arrived, and its tasks (to cancel)."""

    until: int | None = None
    nodes: list[str] = field(default_factory=list)
    env: dict[str, Any] | None = None
    ok_from: str | None = None
    codes: list[int | None] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    skipped: str | None = None  # why a node cannot run the cell
    stopping: threading.Event = field(default_factory=threading.Event)
    tasks: set[Any] = field(default_factory=set)


@dataclass
class RayJob:
    """A submitted cell: its attempt, followed by a driver thread of its own, and how it ended."""

    cell: CellSpec
    attempt: Attempt
    thread: threading.Thread | None = None
    ended: CellExit | None = None


@dataclass
class RayExecutor:
    """Runs cells as Ray tasks (see the module docstring); ``devices`` are the device kinds to run the suite on."""

    manager: Manager
    address: str | None = None
    devices: Sequence[str] = ()
    retries: int = 2
    data_copy: bool = False
    build: bool = True  # a node builds a missing environment; without, the cell is skipped naming ``hint``
    hint: str = "harness envs build --suite SUITE"
    kinds: dict[str, str] = field(default_factory=dict)  # cell id -> device kind
    slots: int = SLOTS

    def __post_init__(self) -> None:
        self.ray = require_ray()
        self.lock = threading.Lock()
        self.data: DataCopy | None = None
        self._driver_env: dict[str, Any] | None = None
        self._remote: Any = None
        self.started_ray = False

    def connect(self) -> None:
        """Join the cluster at ``address`` (``auto``: the running one; None: it, or a new local one), unless this
        process already has; a Ray this call started is shut down by :meth:`close`."""
        if self.ray.is_initialized():
            return
        try:
            self.ray.init(address=self.address, log_to_driver=True, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise FleetError(f"cannot join the Ray cluster at {self.address or 'auto'}: {exc}") from exc
        self.started_ray = True

    # -- the executor protocol (harness.api.Executor)

    def expand(self, cells: list[CellSpec]) -> list[CellSpec]:
        """The suite once per device kind (``--devices``)."""
        cells, self.kinds = per_kind(cells, self.devices)
        return cells

    def open(self, cells: list[CellSpec], out: Path) -> None:
        if self.data_copy and any(c.data for c in cells):
            self.data = self.pack(Path(next(c.data for c in cells if c.data)))

    def place(self, cell: CellSpec) -> tuple[str | None, dict[str, Any]]:
        """Whether some node of the cluster can take the cell (the node places it in its environment)."""
        kind = self.kinds.get(cell.id)
        return self.request(cell, kind)[0], self.driver_env(kind)

    def submit(self, cell: CellSpec, out: Path, resume: bool, python: str | None,
               until: int | None = None) -> RayJob:
        job = RayJob(cell, Attempt(until))
        job.thread = threading.Thread(target=self.follow_job, args=(job, CellStore(out, cell.id), resume),
                                      daemon=True, name=f"harness-fleet-{cell.id}")
        job.thread.start()
        return job

    def poll(self, job: RayJob) -> CellExit | None:
        return None if job.thread is None or job.thread.is_alive() else job.ended

    def cancel(self, job: RayJob, signum: int) -> None:
        """Stop the cell: its tasks are cancelled, their workers killed, the cell process dies with them."""
        job.attempt.stopping.set()
        with self.lock:  # _task() checks ``stopping`` under the lock: no task starts after this looked
            tasks = list(job.attempt.tasks)
        for task in tasks:
            with suppress(Exception):
                self.ray.cancel(task, force=True)

    def close(self) -> None:
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False

    def pack(self, root: Path) -> DataCopy:
        tqdm.write(f"harness: packing {root} to copy once to every node")
        manifest, blob = pack(root)
        return DataCopy(root.name, manifest, self.ray.put(blob))

    # -- one cell, in a driver thread of its own

    def follow_job(self, job: RayJob, store: CellStore, resume: bool) -> None:
        """Run one attempt of the cell and say how it ended (``job.ended``, always set)."""
        cell, attempt = job.cell, job.attempt
        kind = self.kinds.get(cell.id)
        ended = CellExit(None, nodes=attempt.nodes)
        try:
            seed, again = self.seed(store, resume)
            self.attempt(cell, kind, self.request(cell, kind)[1], store, attempt, seed, again)
            code = next((c for c in attempt.codes if c), 0)
            codes = ", ".join(map(str, attempt.codes))
            error = None if store.result() or attempt.skipped else (
                f"no result came home from node(s) {', '.join(attempt.nodes)} (exit {codes})")
            ended = CellExit(code, attempt.tail, error=error, nodes=attempt.nodes, skipped=attempt.skipped,
                             env=attempt.env)
        except NodeLost as exc:
            ended = CellExit(None, lost=str(exc), nodes=[exc.node], retry_on=f"another {kind or 'node'}")
        except Cancelled:
            pass
        except Exception as exc:
            if not attempt.stopping.is_set():
                where = f" on node {', '.join(attempt.nodes)}" if attempt.nodes else ""
                reason = f"{type(exc).__name__}{where}: {str(exc).strip().splitlines()[-1][:500]}"
                tqdm.write(f"[{cell.id}] failed: {reason}")
                ended = CellExit(None, error=reason, nodes=attempt.nodes)
        finally:
            job.ended = ended

    def seed(self, store: CellStore, again: bool) -> tuple[dict[str, bytes], bool]:
        """The files a resumed or retried cell starts from on its node (its rows and checkpoint), and whether
        it resumes; without a checkpoint it starts over."""
        if not again:
            return {}, False
        if not (store.checkpoint_path / "trainer.pt").exists():
            store.epochs_path.unlink(missing_ok=True)
            store.result_path.unlink(missing_ok=True)
            return {}, False
        store.result_path.unlink(missing_ok=True)
        files = [store.epochs_path, *sorted(p for p in store.checkpoint_path.rglob("*") if p.is_file())]
        return {p.relative_to(store.dir).as_posix(): p.read_bytes() for p in files if p.exists()}, True

    def request(self, cell: CellSpec, kind: str | None) -> tuple[str | None, dict[str, Any]]:
        """What each of the cell's tasks asks Ray for, or why no node of the cluster can give it."""
        alive = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        key = None
        if kind:
            key = next((k for k in (f"accelerator_type:{kind}", kind) if any(r.get(k) for r in alive)), None)
            if key is None:
                seen = sorted({k.removeprefix("accelerator_type:") for r in alive for k in r
                               if k.startswith("accelerator_type:") or not re.match(r"^(CPU|GPU|memory|"
                               r"object_store_memory|node:.*|accelerator_type:.*)$", k)})
                return (f"no node of the Ray cluster offers device kind {kind!r} (kinds there: "
                        f"{', '.join(seen) or 'none'})"), {}
        members = [r for r in alive if key is None or r.get(key)]
        gpus = cell.device == "cuda" or (cell.device == "auto" and any(r.get("GPU", 0) >= cell.nproc for r in members))
        request: dict[str, Any] = {"num_cpus": cell.nproc, "num_gpus": cell.nproc if gpus else 0,
                                   "resources": {key: KIND_SLIVER} if key else {}}
        fits = [r for r in members if r.get("CPU", 0) >= cell.nproc and r.get("GPU", 0) >= request["num_gpus"]]
        if len(fits) < nodes(cell):
            what = f"{cell.nproc} CPU(s)" + (f" and {cell.nproc} GPU(s)" if gpus else "")
            return (f"needs {nodes(cell)} node(s){f' of kind {kind}' if kind else ''} with {what} each; the Ray "
                    f"cluster has {len(fits)}"), {}
        return None, request

    def attempt(self, cell: CellSpec, kind: str | None, request: dict[str, Any], store: CellStore,
                attempt: Attempt, seed: dict[str, bytes], resume: bool) -> None:
        """Run the cell once: one task, or one per node in a placement group; write what comes home."""
        options = {"num_returns": "streaming", "max_retries": 0, **request}  # retries are the runner's: elsewhere
        if nodes(cell) == 1:
            self.follow(self.task(options, cell, kind, resume, seed, [], attempt), store, attempt)
            return
        self.gang(options, cell, kind, request, store, attempt, seed, resume)

    def task(self, options: dict[str, Any], cell: CellSpec, kind: str | None, resume: bool, seed: dict[str, bytes],
             launch: list[str], attempt: Attempt) -> Any:
        with self.lock:  # cancel() sets stopping, then takes the lock: no task starts after it looked
            if attempt.stopping.is_set():
                raise Cancelled
            if self._remote is None:
                self._remote = self.ray.remote(node_cell)
            gen = self._remote.options(**options).remote(cell.describe(), kind, resume, seed, launch, self.data,
                                                         self.build, self.hint, attempt.until)
            attempt.tasks.add(gen)
        return gen

    def follow(self, gen: Any, store: CellStore, attempt: Attempt) -> None:
        """Write each of the task's messages into ``store`` until it ends; system failures raise NodeLost."""
        ray, node = self.ray, "(not yet placed)"
        try:
            for ref in gen:
                message, payload = ray.get(ref)
                if message == "node":
                    node = f"{payload['ip']} ({payload['hostname']}, Ray node {payload['node_id'][:12]})"
                    with self.lock:
                        attempt.nodes.append(node)
                elif message == "env":
                    attempt.env = attempt.env or payload
                elif message == "exit":
                    attempt.codes.append(payload["code"])
                    attempt.skipped = attempt.skipped or payload.get("skipped")
                    attempt.tail = payload["tail"] if payload["code"] or not attempt.tail else attempt.tail
                else:
                    with self.lock:
                        self.write(store, message, payload, attempt, node)
        except ray.exceptions.TaskCancelledError:
            raise Cancelled from None
        except ray.exceptions.RayTaskError as exc:
            if attempt.stopping.is_set():
                raise Cancelled from None
            raise RuntimeError(str(exc.cause) if exc.cause else str(exc)) from None
        except ray.exceptions.RayError as exc:
            if attempt.stopping.is_set():
                raise Cancelled from None
            raise NodeLost(node, exc) from None
        finally:
            with self.lock:
                attempt.tasks.discard(gen)

    def write(self, store: CellStore, message: str, files: dict[str, bytes], attempt: Attempt, node: str) -> None:
        """Mirror a node's files into the driver's cell folder; a checkpoint rotates in whole (as on the node).
        Of a multi-node cell's nodes the one that wrote an ``ok`` result keeps it."""
        if message == "checkpoint":
            with store.checkpoint() as tmp:
                for rel, blob in files.items():
                    write_bytes(tmp / safe(rel), blob)
            return
        for rel, blob in files.items():
            if rel == "result.json":
                if attempt.ok_from not in (None, node):
                    continue
                if results.status_of(blob) in ("ok", "paused"):
                    attempt.ok_from = node
            write_bytes(store.dir / safe(rel), blob)

    def gang(self, options: dict[str, Any], cell: CellSpec, kind: str | None, request: dict[str, Any], store: CellStore,
             attempt: Attempt, seed: dict[str, bytes], resume: bool) -> None:
        """A multi-node cell: reserve its nodes together, then start one task per node around one rendezvous."""
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        ray, count = self.ray, nodes(cell)
        bundle = {"CPU": request["num_cpus"], **({"GPU": request["num_gpus"]} if request["num_gpus"] else {}),
                  **request["resources"]}
        group = placement_group([bundle] * count, strategy="STRICT_SPREAD")
        try:
            while not ray.wait([group.ready()], timeout=POLL_S)[0]:
                if attempt.stopping.is_set():
                    raise Cancelled
            on = [PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=i)
                  for i in range(count)]
            host, port = ray.get(ray.remote(endpoint).options(num_cpus=0, scheduling_strategy=on[0]).remote())
            rdzv = f"{cell.id[:40]}-{os.urandom(4).hex()}"
            gens = [self.task({**options, "scheduling_strategy": on[i]}, cell, kind, resume, seed,
                              [f"--nnodes={count}", f"--node-rank={i}", f"--rdzv-endpoint={host}:{port}",
                               f"--rdzv-id={rdzv}"], attempt) for i in range(count)]
            errors: list[BaseException] = []

            def follow(gen: Any) -> None:
                try:
                    self.follow(gen, store, attempt)
                except BaseException as exc:
                    errors.append(exc)
                    for other in gens:  # one node lost: the others' ranks would wait for it until timeout
                        if other is not gen:
                            with suppress(Exception):
                                ray.cancel(other, force=True)

            threads = [threading.Thread(target=follow, args=(gen,), daemon=True) for gen in gens]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise next((e for e in errors if isinstance(e, NodeLost)), errors[0])
        finally:
            remove_placement_group(group)

    def driver_env(self, kind: str | None) -> dict[str, Any]:
        """For results the driver writes before a node answered: the driver's fingerprint, with the kind."""
        if self._driver_env is None:
            self._driver_env = envinfo.fingerprint(envinfo.device_info("cpu"), self.manager.environment())
        return {**self._driver_env, "fleet_kind": kind, "fleet_node": None}


def safe(rel: str) -> str:
    """A relative path from a node, refused when it would leave the cell's folder."""
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts or not parts:
        raise ValueError(f"refusing the path {rel!r} from a node")
    return rel
