"""The code sandbox: model-written programs run here, never in the trainer's process.

One execution = one child process (`SandboxPool.run`):
  * its own session and process group (`start_new_session`), killed as a whole afterwards;
  * on Linux, when `unshare` works (root, or unprivileged user namespaces), new network, PID and mount
    namespaces: no network at all (only a downed loopback), every process the program starts dies
    with it (a `setsid` + double fork cannot escape the PID namespace), and `/tmp`, `/var/tmp`,
    `/dev/shm` are private tmpfs mounts that vanish with it;
  * as root, the program runs under its own unprivileged uid per pool slot (so `RLIMIT_NPROC` bites
    and the filesystem outside its folder is read-only to it);
  * scrubbed environment (no tokens, `CUDA_VISIBLE_DEVICES=""`), fresh work folder removed afterwards,
    stdin closed, limits on CPU seconds, address space, file size, open files and processes, output
    capped, a wall-clock timeout.
The pass decision comes only from the harness's side channel (an inherited pipe): lines prefixed with a random
per-execution token, checked here against the hidden expected outputs and the number of tests that
ran (see `training/sandbox_harness.py`). Exit code and stdout are never trusted.

A `SandboxPool` runs executions on a thread pool (each thread waits on its child), which keeps all
cores busy with children while the trainer's process stays idle. Windows: see README (process-tree
kill only; no rlimits or network cut).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from training.sandbox_harness import encode

HARNESS_SOURCE = (Path(__file__).with_name("sandbox_harness.py")).read_text(encoding="utf-8")
SANDBOX_UID_BASE = 220000
"""as root, pool slot i runs programs as uid/gid SANDBOX_UID_BASE + i (no passwd entry needed)."""


@dataclass
class SandboxLimits:
    """Per-execution limits. Defaults suit short unit-test programs."""

    timeout_s: float = 5.0
    """wall clock from spawn to verdict; the whole process tree is killed at the deadline."""
    cpu_s: int = 4
    """RLIMIT_CPU of the program (SIGXCPU, then SIGKILL one second later)."""
    address_space_bytes: int = 1 << 30
    """RLIMIT_AS: 1 GiB is ample for CPython plus test data; 10 GB allocations fail with MemoryError."""
    file_size_bytes: int = 1 << 20
    """RLIMIT_FSIZE: largest file the program may write."""
    open_files: int = 64
    processes: int = 16
    """RLIMIT_NPROC (enforced for the slot's own uid as root, or inside a user namespace)."""
    output_bytes: int = 64 * 1024
    """stdout+stderr kept; more than this kills the execution (kind output_limit)."""


@dataclass
class ExecResult:
    passed: bool
    kind: str
    """pass | wrong_answer | syntax_error | exception | missing_entry_point | timeout | output_limit |
    crash | no_report | forged | infra (sandbox failure: not the program's fault)."""
    tests_run: int = 0
    tests_total: int = 0
    duration_s: float = 0.0
    detail: str = ""
    output: str = ""

    @property
    def infra(self) -> bool:
        return self.kind == "infra"


@dataclass
class Job:
    """One program and its tests. io tests: `inputs` (argument lists) + hidden `expected` outputs;
    assert tests: `tests` source defining `check(candidate)`."""

    code: str
    entry_point: str
    inputs: list | None = None
    expected: list | None = None
    tests: str | None = None


# ----------------------------------------------------------------------------------------------
# Isolation probe


@dataclass
class Isolation:
    mode: str
    """namespaces (net+pid+mount via unshare) | process_group (no namespaces available)."""
    unshare_argv: list[str] = field(default_factory=list)
    drop_uid: bool = False
    network_cut: bool = False
    note: str = ""


_ISOLATION: Isolation | None = None
_ISOLATION_LOCK = threading.Lock()

# Runs as root inside the new mount namespace, then execs the harness ("$1" is the interpreter).
# An interpreter that itself lives under a folder about to be hidden (a checkout or a frozen
# binary under /tmp, as on CI machines) is first bind-mounted onto /mnt so it stays reachable.
_MOUNT_SCRIPT = (
    'p=$1; shift; case "$p" in /tmp/*|/var/tmp/*|/dev/shm/*) [ -d /mnt ] || exit 97; '
    'mount --bind "$(dirname "$p")" /mnt || exit 97; p="/mnt/$(basename "$p")";; esac; '
    "for d in /tmp /var/tmp /dev/shm; do [ -d $d ] && mount -t tmpfs -o size=64m,mode=1777 sigma_sbx $d || exit 97; "
    'done; exec "$p" "$@"'
)


def probe_isolation() -> Isolation:
    """Find the strongest isolation this machine allows (once per process; ~50 ms)."""
    global _ISOLATION
    with _ISOLATION_LOCK:
        if _ISOLATION is not None:
            return _ISOLATION
        iso = Isolation(mode="process_group", note="no unshare: network not cut, escaped daemons killed by marker")
        unshare = shutil.which("unshare") if sys.platform.startswith("linux") else None
        if unshare:
            base = [unshare, "--net", "--pid", "--fork", "--kill-child", "--mount"]
            tries = [(base, True)] if os.geteuid() == 0 else []
            tries.append(([unshare, "--user", "--map-root-user", *base[1:]], False))
            for argv, drop in tries:
                cmd = [*argv, "--", "/bin/sh", "-c", _MOUNT_SCRIPT, "sh", "/bin/sh", "-c", "exit 0"]
                try:
                    ok = subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
                except (OSError, subprocess.TimeoutExpired):
                    ok = False
                if ok:
                    iso = Isolation(mode="namespaces", unshare_argv=argv, drop_uid=drop, network_cut=True,
                                    note="net+pid+mount namespaces" + (", per-slot uid" if drop else ", user ns"))
                    break
        _ISOLATION = iso
        return iso


# ----------------------------------------------------------------------------------------------
# The pool


def _scrubbed_env(marker: str, workdir: str) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
           "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": "", "SIGMA_SANDBOX_EXEC": marker}
    if os.name == "nt":
        env["SYSTEMROOT"] = os.environ.get("SYSTEMROOT", r"C:\Windows")
        env["PATH"] = os.path.dirname(sys.executable)
    return env


class SandboxPool:
    """Run programs against tests in isolated children, `workers` at a time."""

    def __init__(self, workers: int | None = None, limits: SandboxLimits | None = None,
                 python: str | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.limits = limits or SandboxLimits()
        # The real file, not a venv's symlink: the harness runs with -I -S (standard library only).
        self.python = python or os.path.realpath(sys.executable)
        self.iso = probe_isolation()
        self._slots: queue.Queue[int] = queue.Queue()
        for i in range(self.workers):
            self._slots.put(i)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self.busy_s = 0.0

    # -- public ---------------------------------------------------------------------------------
    def run(self, job: Job) -> ExecResult:
        """One execution (blocking). Never raises for anything the program does."""
        slot = self._slots.get()
        try:
            try:
                res = self._execute(job, slot)
            except Exception as e:  # noqa: BLE001 - spawn failure etc.: infrastructure, not the model
                res = ExecResult(False, "infra", detail=f"{type(e).__name__}: {e}"[:300])
        finally:
            self._slots.put(slot)
        with self._lock:
            self.counts[res.kind] += 1
            self.busy_s += res.duration_s
        return res

    def run_many(self, jobs: list[Job]) -> list[ExecResult]:
        return list(self._executor.map(self.run, jobs))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one execution --------------------------------------------------------------------------
    def _execute(self, job: Job, slot: int) -> ExecResult:
        lim, iso = self.limits, self.iso
        token = secrets.token_hex(16)
        io_kind = job.inputs is not None
        uid = SANDBOX_UID_BASE + slot if iso.drop_uid else None
        private_tmp = iso.mode == "namespaces"
        workdir = None if private_tmp else tempfile.mkdtemp(prefix="eco_sbx_")
        payload = {"token": token, "kind": "io" if io_kind else "assert", "code": job.code,
                   "entry_point": job.entry_point, "inputs": job.inputs, "tests": job.tests,
                   "limits": asdict(lim), "uid": uid, "private_tmp": private_tmp}
        job_file = tempfile.TemporaryFile()  # noqa: SIM115 - unlinked; closed right after the spawn
        job_file.write(json.dumps(payload).encode())
        job_file.seek(0)
        side_r, side_w = os.pipe()
        # The harness learns its two fds from argv (pass_fds keeps their numbers), so no
        # preexec_fn runs between fork and exec: that is unsafe in a threaded trainer.
        # -S skips site-packages (~12 ms of .pth processing per start); the frozen binary takes -I only.
        flags = ["-I"] if getattr(sys, "frozen", False) else ["-I", "-S"]
        argv = [self.python, *flags, "-c", HARNESS_SOURCE, str(job_file.fileno()), str(side_w)]
        if private_tmp:
            argv = [*iso.unshare_argv, "--", "/bin/sh", "-c", _MOUNT_SCRIPT, "sh", *argv]
        if workdir and uid is not None:
            os.chown(workdir, uid, uid)
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                cwd=workdir or "/", env=_scrubbed_env(token[:8], workdir or "/tmp/work"),
                start_new_session=True, close_fds=True, pass_fds=(job_file.fileno(), side_w),
            )
        finally:
            os.close(side_w)
            job_file.close()
        try:
            out, side, why = self._collect(proc, side_r, t0 + lim.timeout_s)
        finally:
            os.close(side_r)
            self._kill_tree(proc, token[:8])
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        duration = time.perf_counter() - t0
        res = self._verdict(job, token, side, why, proc.returncode)
        res.duration_s, res.output = duration, out.decode("utf-8", "replace")
        return res

    def _collect(self, proc: subprocess.Popen, side_r: int, deadline: float) -> tuple[bytes, bytes, str]:
        """Read stdout and the side channel until both close, the deadline passes or output overflows."""
        lim = self.limits
        out, side = bytearray(), bytearray()
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(side_r, selectors.EVENT_READ, side)
        open_fds, exited_at = 2, None
        why = ""
        while open_fds:
            now = time.perf_counter()
            if now >= deadline:
                why = "timeout"
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 0.2:
                break  # the child is gone; anything still holding the pipes is an escaped process
            for key, _ in sel.select(timeout=min(0.05, deadline - now)):
                fd = key.fileobj if isinstance(key.fileobj, int) else key.fileobj.fileno()
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_fds -= 1
                    continue
                key.data.extend(chunk)
                if key.data is out and len(out) > lim.output_bytes or key.data is side and len(side) > 4 * lim.output_bytes + 1024 * 64:
                    why = "output_limit"
            if why:
                break
        sel.close()
        proc.stdout.close()
        return bytes(out[: lim.output_bytes]), bytes(side), why

    def _kill_tree(self, proc: subprocess.Popen, marker: str) -> None:
        if os.name == "nt":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], capture_output=True)
            proc.wait()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # pgid == pid (start_new_session)
        proc.wait()
        # With a PID namespace its processes die once its init does, but asynchronously; without
        # one, daemons may have left the group. Either way: kill and wait until none carries the
        # execution's marker (a /proc scan, ~2 ms), so nothing outlives the verdict.
        _kill_marked(marker)

    def _verdict(self, job: Job, token: str, side: bytes, why: str, rc: int | None) -> ExecResult:
        total = len(job.inputs) if job.inputs is not None else 0
        if why == "timeout":
            return ExecResult(False, "timeout", tests_total=total, detail=f"wall clock > {self.limits.timeout_s}s")
        if why == "output_limit":
            return ExecResult(False, "output_limit", tests_total=total)
        if rc == 97 and not side:
            return ExecResult(False, "infra", detail="sandbox mount set-up failed")
        events, forged = [], 0
        for line in side.decode("utf-8", "replace").splitlines():
            tok, _, body = line.partition(" ")
            if tok != token:
                forged += 1
                continue
            try:
                events.append(json.loads(body))
            except ValueError:
                forged += 1
        if not events:
            if rc is not None and rc < 0:
                return ExecResult(False, "crash", tests_total=total, detail=f"killed by signal {-rc}")
            kind = "forged" if forged else "no_report"
            return ExecResult(False, kind, tests_total=total, detail=f"exit code {rc}")
        last = events[-1]
        if last.get("event") == "error":
            return ExecResult(False, last.get("kind", "exception"), tests_total=total, detail=last.get("detail", ""))
        if job.inputs is None:  # assert tests: done + at least one assert ran
            done = last.get("event") == "done"
            n = int(last.get("n", 0)) if done else 0
            ok = done and n > 0 and not forged
            return ExecResult(ok, "pass" if ok else ("no_report" if not done else "wrong_answer"),
                              tests_run=n, tests_total=n)
        results = {e["i"]: e for e in events if e.get("event") == "result" and isinstance(e.get("i"), int)}
        done = last.get("event") == "done" and last.get("n") == total
        if not done or sorted(results) != list(range(total)):
            return ExecResult(False, "no_report", tests_run=len(results), tests_total=total,
                              detail="harness did not finish every test")
        wrong = [i for i in range(total) if not outputs_match(results[i], job.expected[i])]
        errors = [i for i in wrong if "err" in results[i]]
        if not wrong:
            return ExecResult(True, "pass", tests_run=total, tests_total=total)
        kind = "exception" if errors and len(errors) == len(wrong) else "wrong_answer"
        detail = results[errors[0]]["err"] if kind == "exception" else f"test {wrong[0]} wrong"
        return ExecResult(False, kind, tests_run=total, tests_total=total, detail=detail)


def outputs_match(result: dict, expected) -> bool:
    """The program's reported value against the hidden expected one (floats to 1e-6 relative)."""
    if "ok" not in result:
        return False
    return _same(result["ok"], encode(expected))


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict) and "float" in a and "float" in b:
        try:
            x, y = float(a["float"]), float(b["float"])
        except (TypeError, ValueError):
            return False
        return x == y or math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _kill_marked(marker: str) -> None:
    """Kill every process whose environment carries this execution's marker (Linux /proc)."""
    needle = f"SIGMA_SANDBOX_EXEC={marker}".encode()
    for _ in range(200):
        found = False
        for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        os.kill(int(pid), signal.SIGKILL)
                        found = True
            except OSError:
                continue
        if not found:
            return
        time.sleep(0.005)
