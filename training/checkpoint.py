"""Checkpoints that are written whole or not at all, verified before use, and never unpickled.

Layout of `<checkpoint-dir>/step_<N>/`:
    model.safetensors      parameters by name (a tied tensor once)
    optimizer.safetensors  every tensor of the optimizer state
    optimizer.json         the rest of the optimizer state, tensors replaced by references
    rng.safetensors        torch CPU and CUDA generator states
    state.json             step, tokens, data position, EMAs, counters, Python/NumPy RNG, config,
                           model shape, tokenizer hash, versions, git revision
    tokenizer.json (+ tokenizer_config.json, special_tokens_map.json)
    manifest.json          size and sha256 of every file above
    COMPLETE               completion marker, written last

A save writes everything into `.tmp_step_<N>`, fsyncs each file, renames the folder into place,
fsyncs the parent, then writes and fsyncs the marker. Loading reads only safetensors and JSON, so a
planted pickle can never run. Anything that fails verification is moved to `quarantine/` with a
reason file, never deleted. Retention removes the marker first and renames the folder to
`.deleting_step_<N>` before deleting it, so a half-deleted checkpoint never looks valid.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from training import faults

MARKER = "COMPLETE"
MANIFEST = "manifest.json"
QUARANTINE = "quarantine"
_TMP_PREFIX = ".tmp_step_"
_DELETING_PREFIX = ".deleting_step_"
_REQUIRED = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "state.json",
             "tokenizer.json")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or used; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------
# Nested state <-> (JSON, flat tensors): optimizer state dicts hold tensors, int keys and tuples.


def flatten_state(obj: object, tensors: dict[str, torch.Tensor], path: str = "t") -> object:
    """Replace tensors by {"__tensor__": key} (collected in `tensors`) and keep int keys and tuples."""
    if isinstance(obj, torch.Tensor):
        # A copy even on the CPU: an asynchronous save writes while training mutates the live state.
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten_state(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint (JSON + tensors only)")


def unflatten_state(obj: object, tensors: dict[str, torch.Tensor]) -> object:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------
# Durable writes


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory for fsync; NTFS renames are journaled
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _phase(name: str) -> None:
    """Save phases are announced for the torture test, which kills the process inside each one."""
    faults.on_save_phase(name)


class Snapshot:
    """Everything a checkpoint holds, already on the CPU (so it can be written in the background)."""

    def __init__(self, *, step: int, model_tensors: dict[str, torch.Tensor], optimizer_state: dict,
                 rng_tensors: dict[str, torch.Tensor], state: dict, tokenizer_dir: Path):
        self.step = step
        self.model_tensors = model_tensors
        self.optimizer_tensors: dict[str, torch.Tensor] = {}
        self.optimizer_json = flatten_state(optimizer_state, self.optimizer_tensors)
        self.rng_tensors = rng_tensors
        self.state = state
        self.tokenizer_dir = tokenizer_dir


def write_checkpoint(root: Path, snap: Snapshot) -> Path:
    """Write `snap` as root/step_<N> atomically; on failure remove the partial folder and raise."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{snap.step}"
    tmp = root / f"{_TMP_PREFIX}{snap.step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _phase("tensors")
        faults.maybe_fail_write()
        save_file(snap.model_tensors, str(tmp / "model.safetensors"))
        save_file(snap.optimizer_tensors, str(tmp / "optimizer.safetensors"))
        save_file(snap.rng_tensors, str(tmp / "rng.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(snap.optimizer_json))
        (tmp / "state.json").write_text(json.dumps(snap.state, indent=1, default=str))
        for f in sorted(snap.tokenizer_dir.iterdir()):
            shutil.copyfile(f, tmp / f.name)
        _phase("manifest")
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {name: {"size": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
                    for name in files}
        (tmp / MANIFEST).write_text(json.dumps({"step": snap.step, "files": manifest}, indent=1))
        for name in [*files, MANIFEST]:
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
        _phase("rename")
        if final.exists():  # an invalid leftover of the same step (a valid one would have been resumed)
            quarantine(root, final, "replaced by a new save of the same step")
        os.replace(tmp, final)
        _fsync_dir(root)
        _phase("marker")
        (final / MARKER).write_text(f"step {snap.step} complete at {time.time():.3f}\n")
        _fsync_file(final / MARKER)
        _fsync_dir(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ----------------------------------------------------------------------------------------------
# Verification, quarantine, discovery


def checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith("step_"):
        return None
    try:
        return int(name[len("step_"):])
    except ValueError:
        return None


def verify_checkpoint(path: Path) -> str | None:
    """None when the checkpoint is complete and intact, else the reason it is not."""
    if not path.is_dir():
        return "not a folder"
    if not (path / MARKER).is_file():
        return "missing completion marker (the save was interrupted)"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        listed = manifest["files"]
    except FileNotFoundError:
        return "missing manifest.json"
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable manifest.json: {e}"
    present = {p.name for p in path.iterdir()} - {MARKER, MANIFEST}
    if missing := sorted(set(listed) - present):
        return f"missing file(s) listed in the manifest: {', '.join(missing)}"
    if extra := sorted(present - set(listed)):
        return f"unexpected file(s) not in the manifest: {', '.join(extra)}"
    if absent := [f for f in _REQUIRED if f not in listed]:
        return f"required file(s) missing: {', '.join(absent)}"
    for name, meta in listed.items():
        size = (path / name).stat().st_size
        if size != meta["size"]:
            return f"{name}: size {size} != {meta['size']} in the manifest (truncated or overwritten)"
        if sha256_file(path / name) != meta["sha256"]:
            return f"{name}: sha256 mismatch (corrupted)"
    for name in listed:
        try:
            if name.endswith(".safetensors"):
                with safe_open(str(path / name), framework="pt") as f:
                    for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                        f.get_slice(key)
            elif name.endswith(".json"):
                json.loads((path / name).read_text())
        except Exception as e:  # a file that hashes right but cannot be parsed is not usable
            return f"{name}: unreadable ({type(e).__name__}: {e})"
    return None


def quarantine(root: Path, path: Path, reason: str) -> Path:
    """Move `path` into root/quarantine/ with a reason file. Never deletes anything."""
    qdir = root / QUARANTINE
    qdir.mkdir(exist_ok=True)
    dest = qdir / f"{path.name.lstrip('.')}_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}"
    n = 0
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name}_{n}")
    os.replace(path, dest)
    (dest.parent / f"{dest.name}.reason.txt").write_text(reason + "\n")
    _fsync_dir(qdir)
    return dest


def quarantine_count(root: Path) -> int:
    qdir = root / QUARANTINE
    return len(list(qdir.glob("*.reason.txt"))) if qdir.is_dir() else 0


def find_resumable(root: Path, *, log: Callable[[str], None] = print) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies; everything newer that does not is quarantined first.

    Leftover temporary folders of an interrupted save are quarantined too; folders that retention
    had started to delete are finished off.
    """
    if not root.is_dir():
        return None, []
    moved: list[tuple[Path, str]] = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(_DELETING_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(_TMP_PREFIX):
            reason = "leftover temporary folder of an interrupted save"
            moved.append((quarantine(root, p, reason), reason))
    candidates = sorted((p for p in root.iterdir() if checkpoint_step(p) is not None),
                        key=lambda p: checkpoint_step(p), reverse=True)
    for p in candidates:
        reason = verify_checkpoint(p)
        if reason is None:
            return p, moved
        dest = quarantine(root, p, reason)
        log(f"checkpoint {p} failed verification ({reason}); moved to {dest}")
        moved.append((dest, reason))
    return None, moved


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoints with a marker, oldest first (cheap: no hashing)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if checkpoint_step(p) is not None and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: checkpoint_step(p))


def apply_retention(root: Path, keep: int, *, protect: set[Path]) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `keep`, never one in `protect` nor the newest."""
    ckpts = complete_checkpoints(root)
    if not ckpts:
        return []
    protected = {p.resolve() for p in protect} | {ckpts[-1].resolve()}
    excess = len(ckpts) - keep
    deleted = []
    for p in ckpts:
        if excess <= 0:
            break
        if p.resolve() in protected:
            continue
        (p / MARKER).unlink()  # first: from here on the folder can never be taken as valid
        _fsync_dir(p)
        _phase("retention")
        doomed = root / f"{_DELETING_PREFIX}{checkpoint_step(p)}"
        os.replace(p, doomed)
        _fsync_dir(root)
        shutil.rmtree(doomed)
        deleted.append(p)
        excess -= 1
    return deleted


# ----------------------------------------------------------------------------------------------
# Reading


def read_checkpoint(path: Path) -> dict:
    """Tensors and JSON of a verified checkpoint (safetensors + JSON only: nothing is unpickled)."""
    state = json.loads((path / "state.json").read_text())
    optimizer = unflatten_state(json.loads((path / "optimizer.json").read_text()),
                                load_file(str(path / "optimizer.safetensors")))
    return {
        "state": state,
        "model": load_file(str(path / "model.safetensors")),
        "optimizer": optimizer,
        "rng": load_file(str(path / "rng.safetensors")),
    }


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
