"""Sharded checkpoints of a whole run, saved atomically, resumed exactly.

Tensors go through torch.distributed.checkpoint (DCP): every rank writes its own shards,
and a checkpoint saved by N ranks with one sharding loads onto M ranks with another (DCP
reshards). Everything else is JSON and TOML. The layout of `--checkpoint-dir`:

    step-12/               a complete checkpoint, published by one atomic rename
        .metadata          DCP's index: each tensor's global shape, shards, file, offset
        __0_0.distcp ...   rank r's shards (tables by shard; replicated tensors once)
        config.toml        the config of the run (`--config` reads it back)
        checkpoint.json    position, best accuracy, RNG and data-stream state, world size,
                           and every other file's size and SHA-256 (written last)
    .tmp-step-16/          a save in progress, or one a crash interrupted: never loaded

A save writes into `.tmp-step-N`; only when every rank has written its part does rank 0
write checkpoint.json and rename the folder to `step-N`, so a crash mid-save leaves the
previous checkpoints as they were. Loading runs no code from the files: tensors load
with `torch.load(weights_only=True)` (DCP), DCP's pickled index through an unpickler
that admits only DCP's metadata classes, the rest with json and tomllib.

Saves overlap training (`--async-checkpoint`, on by default): at a due step the trainer
waits only while this rank's state is copied into host buffers (kept between saves: one
copy of this rank's shards and optimizer state); a background thread writes the copy with
DCP, hashes the files and publishes, over a gloo group of its own (the training group's
collectives stay on the main thread). At most one save is in flight: the next due save, the
last one and the end of the run wait for it first, and its error is raised there.

What we add to DCP, and why: the atomic publish (DCP writes in place), file hashes (DCP
cannot tell a flipped byte from a weight), the checks that turn a damaged or
mismatching checkpoint into one line naming the file or tensors, the safe index
reader (DCP's uses pickle.load), and the background writer: DCP's `async_save` stages and
writes, but the hashes and the publish must follow the write, and its API differs across
the torch versions we support (2.11-2.14), `dcp.save` on a staged copy does not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from dlrm_dist.config import SHAPE_SETTINGS, Config, flag_name, to_toml
from dlrm_dist.errors import CheckpointError, DlrmDistError

log = logging.getLogger("dlrm_dist")

FORMAT = "dlrm_dist checkpoint 1"
RECORD = "checkpoint.json"
CONFIG = "config.toml"
_STEP_DIR = re.compile(r"step-(\d+)")
_SWITCH_INTERVAL_S = 1e-4  # while a save is written in the background (see _InFlight)


@dataclasses.dataclass
class TrainState:
    """Where training stands after `step` steps: the next batch is `batch` of `epoch`."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    best_accuracy: float = 0.0  # the evaluation lines' running best


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """The published checkpoints in directory, oldest first, as (step, path)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _STEP_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def describe_resume(cfg: Config) -> str:
    """Where a run with cfg resumes, in words, for the first line of a start (rank 0);
    never raises: a bad --resume is reported by `CheckpointManager.load` as usual."""
    try:
        path = resume_path(cfg)
        if path is None:
            return "starting fresh"
        record = _read_record(path)
    except (CheckpointError, OSError):
        return f"resuming as --resume {cfg.checkpoint.resume} says"
    step, world = record["state"]["step"], record["world_size"]
    return f"resuming from {path} (step {step}, saved by {world} rank(s))"


def resume_path(cfg: Config) -> Path | None:
    """The checkpoint `--resume` names, or None to start fresh. Raises CheckpointError."""
    resume = cfg.checkpoint.resume
    if not resume:
        return None
    if resume == "auto":
        return latest(cfg.checkpoint.dir)
    path = Path(resume)
    if (path / RECORD).is_file():
        return path
    if path.is_dir() and latest(path) is not None:
        return latest(path)
    if path.is_dir() and _STEP_DIR.fullmatch(path.name):
        raise _damaged(path, f"{RECORD} is missing")
    what = "holds no checkpoint" if path.is_dir() else "does not exist"
    raise CheckpointError(
        f"--resume {resume}: {path} {what}; give a step-N folder or a directory of "
        "them, or --resume auto with --checkpoint-dir"
    )


@dataclasses.dataclass
class _Job:
    """One save: the position, the tensors DCP writes (host copies when written in the
    background), and the RNG and data-stream state of the record, all taken when it was
    due (the background writer publishes them later)."""

    state: TrainState
    tensors: dict[str, Any]
    rng: dict[str, Any]  # the record's numpy_rng and torch_rng
    staged_s: float  # how long the step waited to copy the state


class _InFlight:
    """A save running in a daemon thread (a process that dies mid-save leaves only the
    `.tmp-step-N` folder, which is never loaded); its error is kept for `wait`."""

    def __init__(self, write: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(write,), name="dlrm_dist-checkpoint", daemon=True
        )
        self.thread.start()

    def _run(self, write: Callable[[], Any]) -> None:
        # DCP's planning is Python: with the default 5 ms switch interval the training loop,
        # back from each kernel, waited up to 5 ms for the GIL (steps 3x slower while a save
        # was in flight, on the test jobs); a short one hands it back at once
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, _SWITCH_INTERVAL_S))
        try:
            write()
        except BaseException as exc:  # raised on the main thread by wait()
            self.error = exc
        finally:
            sys.setswitchinterval(interval)


class CheckpointManager:
    """Saves and loads one run's state: the sharded model and embedding optimizer state,
    the dense optimizers, the position (the lr follows from the step), the reference
    data stream `rs` and torch's RNG, and the config. All ranks make the same calls.

    `load()` once before training; `save(state)` after every step (it saves when due:
    every `--checkpoint-every` steps, in the background with `--async-checkpoint`),
    `save(state, last=True)` at the end (it returns once published), and `close()` on
    the way out, also after a failure (a save in flight finishes before the group goes).
    """

    def __init__(
        self,
        cfg: Config,
        model: torch.nn.Module,
        optimizer: Any,
        rs: np.random.RandomState,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.cfg, self.model, self.optimizer, self.rs = cfg, model, optimizer, rs
        self.rank, self.world_size = rank, world_size
        self.dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else None
        self.every = cfg.checkpoint.every
        self.overlap = cfg.checkpoint.async_save and dist.is_initialized()
        self._saved_step = -1  # the step of the newest checkpoint of this run in self.dir
        self._in_flight: _InFlight | None = None
        self._job: _Job | None = None  # the newest save, in flight or done
        self._group: Any = None  # the background writer's own gloo group, made at its 1st save
        self._staged: dict[str, Any] | None = None  # host copies, reused from save to save
        self._layout: dict[str, tuple] = {}

    def load(self) -> TrainState:
        """Restore the checkpoint `--resume` names; a fresh TrainState when there is none
        to resume. Raises CheckpointError and leaves every checkpoint as it was."""
        path = self._rank0(self._resolve)
        if path is None:
            if self.dir is not None:
                self._rank0(lambda: self._check_dir(None, 0))
            return TrainState()
        record = self._rank0(lambda: _read_record(path))
        state = TrainState(**record["state"])
        if self.dir is not None:
            self._rank0(lambda: self._check_dir(path, state.step))
            if path.resolve().parent == self.dir.resolve():
                self._saved_step = state.step  # every rank alike: save() is collective
        # the index and the config first (rank 0 reads them now), the shards once they fit
        small = [name for name in record["files"] if not name.endswith(".distcp")]
        self._rank0(lambda: _verify_files(path, record, small))
        tensors = self._tensors()
        self._check_fit(path, record, tensors)
        shards = sorted(name for name in record["files"] if name not in small)
        mine = shards[self.rank :: self.world_size]
        self._all_ranks(lambda: _verify_files(path, record, mine))
        try:
            dcp.load(tensors, storage_reader=_SafeReader(path), planner=_TensorsOnly())
        except (CheckpointException, Exception) as exc:
            raise CheckpointError(f"could not load checkpoint {path}: {_reason(exc)}") from None
        self._restore_rng(record)
        if self.rank == 0:
            log.info(
                "checkpoint: resumed from %s: step %d (epoch %d, batch %d)",
                path,
                state.step,
                state.epoch,
                state.batch,
            )
        return state

    def save(self, state: TrainState, last: bool = False) -> Path | None:
        """Save when due (every N steps, or `last`); returns the checkpoint's path, which a
        background save publishes later (`wait`). Raises CheckpointError if this save, or
        the one still in flight, fails; earlier checkpoints stay as they were."""
        due = self.every > 0 and state.step % self.every == 0
        if self.dir is None or not (due or last):
            return None
        if state.step == self._saved_step:  # saved when it was due, just before the end
            if last:
                self.wait()
            return None
        self.wait()  # at most one save in flight
        start = time.perf_counter()
        background = self.overlap and not last
        tensors = self._stage() if background else self._tensors()
        job = _Job(state, tensors, self._rng_state(), time.perf_counter() - start)
        self._job, self._saved_step = job, state.step
        final = self.dir / f"step-{state.step}"
        if background:
            if self._group is None:  # every rank makes its first due save at the same step
                self._group = dist.new_group(backend="gloo")
            self._in_flight = _InFlight(lambda: self._write(job, final, self._group))
        else:
            self._write(job, final, None)
        return final

    def wait(self) -> None:
        """Return once the save in flight (if any) is published; raise its error."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        in_flight.thread.join()
        if in_flight.error is not None:
            raise in_flight.error

    def close(self) -> None:
        """On the way out: let a save in flight finish. After a failure its own error is
        only logged (the failure that stopped the run is the one to report); its
        collectives are bounded by --dist-timeout like every other."""
        try:
            self.wait()
        except Exception as exc:
            if self.rank == 0:
                log.warning("checkpoint: the save in flight failed too: %s", _reason(exc))

    def _write(self, job: _Job, final: Path, group: Any) -> None:
        """Write, hash and publish one save; group: the collectives' process group (the
        writer thread's own, or None: the default, for a save on the main thread)."""
        tmp = self.dir / f".tmp-step-{job.state.step}"
        start = time.perf_counter()
        try:
            self._rank0(lambda: _fresh_dir(tmp), group)
            try:
                writer = FileSystemWriter(tmp, thread_count=1)
                dcp.save(job.tensors, storage_writer=writer, process_group=group)
            except (CheckpointException, Exception) as exc:
                raise CheckpointError(_reason(exc)) from None
            mine = sorted(tmp.glob(f"__{self.rank}_*"))
            files = self._all_ranks(lambda: _hash_files(mine), share=True, group=group)
            files = {name: info for part in files for name, info in part.items()}
            self._rank0(lambda: self._publish(job.state, tmp, final, files), group)
        except CheckpointError as exc:
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(
                f"could not save checkpoint {final}: {exc}; the checkpoints already there "
                "are unchanged"
            ) from None
        if self.rank == 0:
            mb = sum(info["bytes"] for info in files.values()) / 2**20
            how = "in the background, " if group is not None else ""
            log.info(
                "checkpoint: saved %s (%.2f MB of shards, %.2f s %sthe step waited %.1f ms)",
                final, mb, time.perf_counter() - start, how, 1e3 * job.staged_s,
            )  # fmt: skip
        if self.cfg.checkpoint.keep_last > 0:
            self._rank0(self._prune, group)

    # --- saving -------------------------------------------------------------------------
    def _tensors(self) -> dict[str, Any]:
        """model.<name> and optimizer.<param>.<state>: the live tensors (ShardedTensors
        over this rank's shards), which DCP saves from and loads into in place."""
        flat = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for param, states in self.optimizer.state_dict()["state"].items():
            for name, value in states.items():
                if isinstance(value, (torch.Tensor, ShardedTensor)):
                    flat[f"optimizer.{param}.{name}"] = value
        return flat

    def _stage(self) -> dict[str, Any]:
        """Host copies of the live tensors (ShardedTensors keep their shards' metadata),
        into buffers kept from save to save; made anew when the tensors change (an
        optimizer whose state appears at its first step)."""
        live = self._tensors()
        layout = {k: (type(v), tuple(v.size()), v.dtype) for k, v in live.items()}
        if self._staged is None or layout != self._layout:
            pinned = torch.cuda.is_available() and any(
                _device(v).type == "cuda" for v in live.values()
            )
            self._staged, self._layout = _create_cpu_state_dict(live, pin_memory=pinned), layout
        return _copy_state_dict(live, self._staged)

    def _rng_state(self) -> dict[str, Any]:
        algorithm, keys, pos, has_gauss, cached = self.rs.get_state()
        numpy_rng = {
            "algorithm": algorithm,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
        return {"numpy_rng": numpy_rng, "torch_rng": torch.get_rng_state().numpy().tobytes().hex()}

    def _publish(self, state: TrainState, tmp: Path, final: Path, files: dict) -> None:
        """Rank 0, once every rank's shards are written: the config and the record (the
        RNG state of the save being written: `self._job`, which no other save replaces
        while it is in flight), then the atomic rename."""
        (tmp / CONFIG).write_text(to_toml(self.cfg))
        files = {**files, **_hash_files(p for p in tmp.iterdir() if p.name not in files)}
        record = {
            "format": FORMAT,
            "state": dataclasses.asdict(state),
            "world_size": self.world_size,
            **self._job.rng,
            "files": dict(sorted(files.items())),
        }
        _write_synced(tmp / RECORD, json.dumps(record, indent=1))
        _fsync_dir(tmp)
        if final.exists():
            raise CheckpointError(
                f"{final} appeared during the save: is another run writing to "
                f"--checkpoint-dir {final.parent}? Give each run its own"
            )
        os.rename(tmp, final)  # the publication: atomic on a POSIX file system
        _fsync_dir(final.parent)

    def _prune(self) -> None:
        """Delete all but the newest keep_last checkpoints (rank 0)."""
        for _, old in list_checkpoints(self.dir)[: -self.cfg.checkpoint.keep_last]:
            try:
                _discard(old)
            except OSError as exc:
                raise CheckpointError(f"--keep-last: could not delete {old}: {exc}") from None

    # --- loading ------------------------------------------------------------------------
    def _resolve(self) -> Path | None:
        """The checkpoint to resume from, or None to start fresh."""
        path = resume_path(self.cfg)
        if path is None and self.cfg.checkpoint.resume == "auto":
            log.info("checkpoint: none in %s yet; starting fresh", self.dir)
        return path

    def _check_dir(self, resumed: Path | None, step: int) -> None:
        """The directory may hold only what this run continues from: never overwrite or
        mix with other runs' checkpoints."""
        mine = resumed.resolve() if resumed is not None else None
        others = [(s, p) for s, p in list_checkpoints(self.dir) if p.resolve() != mine]
        newer = [p.name for s, p in others if resumed is None or s >= step]
        if newer:
            what = "continue them with --resume auto" if resumed is None else "move them away"
            raise CheckpointError(
                f"--checkpoint-dir {self.dir} already holds {', '.join(newer)}, which this "
                f"run would overwrite or mix with: {what}, or use another --checkpoint-dir"
            )

    def _check_fit(self, path: Path, record: dict, tensors: dict[str, Any]) -> None:
        """Every tensor this run has must be in the checkpoint with its global shape, and
        the settings that shape the model or the optimizer state must be the same."""
        metadata = self._all_ranks(lambda: _read_metadata(path, record))
        mine = _tensor_problems(metadata, tensors)
        problems = [mine]
        if self.world_size > 1:
            problems = [None] * self.world_size
            dist.all_gather_object(problems, mine)
        problems = list(dict.fromkeys(p for part in problems for p in part))
        shapes, changed = self._rank0(lambda: _setting_changes(path, self.cfg))
        if problems or shapes:
            what = "; ".join(problems[:3]) + (
                f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
            )
            # with tensors that do not fit, any changed setting may be why (a sharding type
            # that keeps another optimizer state, ...)
            differ = shapes + changed if problems else shapes
            saved = f"saved with {'; '.join(differ)}" if differ else ""
            raise CheckpointError(
                f"checkpoint {path} does not fit this run: "
                + ", ".join(x for x in (what, saved) if x)
                + f": resume with the settings it was saved with ({path / CONFIG}), "
                "or start fresh"
            )
        if self.rank == 0 and changed:
            log.info("checkpoint: resuming with changed settings: %s", "; ".join(changed))
        if self.rank == 0 and record["world_size"] != self.world_size:
            log.info(
                "checkpoint: saved by %d rank(s), resharded onto %d",
                record["world_size"],
                self.world_size,
            )

    def _restore_rng(self, record: dict) -> None:
        rng = record["numpy_rng"]
        keys = np.asarray(rng["keys"], dtype=np.uint32)
        state = (rng["algorithm"], keys, rng["pos"], rng["has_gauss"], rng["cached_gaussian"])
        self.rs.set_state(state)
        torch_rng = np.frombuffer(bytes.fromhex(record["torch_rng"]), dtype=np.uint8)
        torch.set_rng_state(torch.from_numpy(torch_rng.copy()))

    # --- agreeing across ranks ----------------------------------------------------------
    def _rank0(self, fn: Callable[[], Any], group: Any = None) -> Any:
        """fn() on rank 0; its result, or its error, on every rank: the ranks act on one
        view of the files and fail together (a rank left waiting would hang). group: the
        process group to agree in (None: the default one)."""
        out: list[Any] = [None]
        if self.rank == 0:
            try:
                out = [("ok", fn())]
            except Exception as exc:
                out = [("error", _reason(exc))]
        if self.world_size > 1:
            dist.broadcast_object_list(out, src=0, group=group)
        kind, value = out[0]
        if kind == "error":
            raise CheckpointError(value)
        return value

    def _all_ranks(self, fn: Callable[[], Any], share: bool = False, group: Any = None) -> Any:
        """fn() on every rank, the lowest failing rank's error raised on all. Returns
        fn's result here, or with `share` every rank's, in rank order."""
        try:
            result, error = fn(), None
        except Exception as exc:
            result, error = None, _reason(exc)
        outs = [(error, result if share else None)]
        if self.world_size > 1:
            outs = [None] * self.world_size
            dist.all_gather_object(outs, (error, result if share else None), group=group)
        for err, _ in outs:
            if err is not None:
                raise CheckpointError(err)
        return [r for _, r in outs] if share else result


# --- reading and checking a checkpoint --------------------------------------------------
def _damaged(path: Path, what: str) -> CheckpointError:
    older = [p for s, p in list_checkpoints(path.parent) if p.name != path.name]
    hint = f"resume from an older one (--resume {older[-1]})" if older else "start fresh"
    return CheckpointError(f"checkpoint {path} is damaged: {what}: {hint}")


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads((path / RECORD).read_text())
    except FileNotFoundError:
        raise _damaged(path, f"{RECORD} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(path, f"{RECORD} is not readable JSON ({exc})") from None
    try:
        if record["format"] != FORMAT:
            raise ValueError(f"format {record['format']!r}, expected {FORMAT!r}")
        TrainState(**record["state"])
        int(record["world_size"])
        if len(record["numpy_rng"]["keys"]) != 624:
            raise ValueError("numpy_rng.keys must hold 624 numbers")
        bytes.fromhex(record["torch_rng"])
        for name, info in record["files"].items():
            if Path(name).name != name or name in (".", "..") or name == RECORD:
                raise ValueError(f"file name {name!r}")
            int(info["bytes"]), str(info["sha256"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _damaged(path, f"{RECORD} is not a {FORMAT} record ({exc})") from None
    return record


def _verify_files(path: Path, record: dict, names: list[str]) -> None:
    """The files' sizes and SHA-256s against the record's."""
    for name in names:
        want = record["files"][name]
        file = path / name
        if not file.is_file():
            raise _damaged(path, f"{name} is missing")
        size = file.stat().st_size
        if size != want["bytes"]:
            how = "truncated" if size < want["bytes"] else "grown"
            raise _damaged(path, f"{name} has {size} bytes, {want['bytes']} expected ({how})")
        if _sha256(file) != want["sha256"]:
            raise _damaged(path, f"{name} does not match its SHA-256 (corrupted)")


_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_METADATA_GLOBALS = {
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
} | {
    (_METADATA_MODULE, name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
}


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's index is a pickle; this admits only the classes DCP puts there."""

    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in _METADATA_GLOBALS or dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} has no place in a checkpoint index")


def _load_metadata(file: Path) -> Metadata:
    with file.open("rb") as fh:
        metadata = _MetadataUnpickler(fh).load()
    if not isinstance(metadata, Metadata):
        raise pickle.UnpicklingError("not a DCP index")
    return metadata


def _read_metadata(path: Path, record: dict) -> Metadata:
    try:
        metadata = _load_metadata(path / ".metadata")
    except FileNotFoundError:
        raise _damaged(path, ".metadata is missing") from None
    except Exception as exc:
        raise _damaged(path, f".metadata is not a DCP index ({_reason(exc)})") from None
    for info in metadata.storage_data.values():
        if info.relative_path not in record["files"]:
            raise _damaged(path, f".metadata names {info.relative_path}, which is not listed")
    return metadata


class _SafeReader(FileSystemReader):
    """DCP's FileSystemReader, reading its index with _MetadataUnpickler, not pickle.load."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = _load_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _TensorsOnly(DefaultLoadPlanner):
    """We save tensors only; DCP would load any other object with torch.load(weights_only=
    False), which runs code."""

    def load_bytes(self, read_item: Any, value: Any) -> None:
        raise pickle.UnpicklingError(f"{read_item.dest_index.fqn} is a pickled object")


def _tensor_problems(metadata: Metadata, tensors: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in tensors.items():
        here = tuple(value.size())
        there = metadata.state_dict_metadata.get(key)
        if there is None:
            problems.append(f"{key} is missing there (here {_shape(here)})")
        elif not hasattr(there, "size"):
            problems.append(f"{key} is not a tensor there")
        elif tuple(there.size) != here:
            problems.append(f"{key} is {_shape(there.size)} there, {_shape(here)} here")
    return problems


def _setting_changes(path: Path, cfg: Config) -> tuple[list[str], list[str]]:
    """Settings of the checkpoint's run that differ from cfg: (those that change shapes,
    the others). Sections checkpoint and metrics are this run's business."""
    try:
        saved = tomllib.loads((path / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _damaged(path, f"{CONFIG} is not readable TOML ({exc})") from None
    shapes, others = [], []
    for section, values in saved.items():
        ours = getattr(cfg, section, None)
        if section in ("checkpoint", "metrics") or ours is None or not isinstance(values, dict):
            continue
        for key, was in values.items():
            now = getattr(ours, key, was)
            if now != was:
                item = f"--{flag_name(section, key)}={_show(was)} (this run: {_show(now)})"
                (shapes if (section, key) in SHAPE_SETTINGS else others).append(item)
    return shapes, others


# --- small file helpers ------------------------------------------------------------------
def _sha256(file: Path) -> str:
    with file.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _hash_files(files) -> dict[str, dict[str, Any]]:
    return {f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in files}


def _fresh_dir(path: Path) -> None:
    """An empty folder for a save; what interrupted saves left in the directory goes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in [*path.parent.glob(".tmp-step-*"), *path.parent.glob(".old-step-*")]:
        log.info("checkpoint: removing %s, left by an interrupted save", leftover)
        shutil.rmtree(leftover)
    path.mkdir()


def _write_synced(file: Path, text: str) -> None:
    with file.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Delete a checkpoint so that no half-deleted one is ever taken for complete: it
    stops being step-N (one rename) before its files go."""
    gone = path.with_name(f".old-{path.name}")
    os.rename(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def _device(value: Any) -> torch.device:
    if isinstance(value, ShardedTensor):
        shards = value.local_shards()
        return shards[0].tensor.device if shards else torch.device("cpu")
    return value.device


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "-".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _shape(size: Any) -> str:
    return "x".join(map(str, size)) if len(size) else "a scalar"


def _reason(exc: BaseException) -> str:
    """One line for an error: ours as they are, DCP's by the first failing rank."""
    if isinstance(exc, CheckpointException) and exc.failures:
        rank, (first, _) = next(iter(sorted(exc.failures.items(), key=lambda kv: kv[0])))
        return f"rank {rank}: {_reason(first)}"
    if isinstance(exc, DlrmDistError):
        return str(exc)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
