"""The sandbox: rewards, attacks, reward hacks and leaks (Linux; each attack well under a second
plus its timeout)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from training.sandbox import Job, SandboxLimits, SandboxPool, probe_isolation

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")

ADD = "def add(a, b):\n    return a + b\n"
IO = dict(entry_point="add", inputs=[[1, 2], [3, 4]], expected=[3, 7])
TIMEOUT = 2.0


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(2, SandboxLimits(timeout_s=TIMEOUT, cpu_s=2)) as p:
        yield p


def _tmp_entries() -> set[str]:
    return {n for n in os.listdir("/tmp") if n.startswith("eco_sbx_")}


def test_isolation_probe_reports_namespaces_here():
    iso = probe_isolation()
    assert iso.mode in ("namespaces", "process_group")
    if os.geteuid() == 0:  # root on this CI: net+pid+mount namespaces and per-slot uids must work
        assert iso.mode == "namespaces" and iso.network_cut and iso.drop_uid


def test_correct_solution_passes_100_of_100_with_pool_saturated(pool):
    results = pool.run_many([Job(ADD, **IO)] * 100)
    assert [r.kind for r in results] == ["pass"] * 100
    assert all(r.tests_run == 2 for r in results)


@pytest.mark.parametrize("code,kind", [
    ("def add(a, b):\n    return a - b\n", "wrong_answer"),
    ("def add(a, b) return a\n", "syntax_error"),
    ("def add(a, b):\n    raise ValueError\n", "exception"),
    ("def plus(a, b):\n    return a + b\n", "missing_entry_point"),
])
def test_failures_are_not_passes(pool, code, kind):
    r = pool.run(Job(code, **IO))
    assert not r.passed and r.kind == kind


ATTACKS = {
    "infinite_loop": "while True:\n    pass\n",
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "setsid_double_fork": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                           "        time.sleep(600)\n    os._exit(0)\n"),
    "alloc_10gb": "x = bytearray(10 * 1024 ** 3)\n" + ADD,
    "print_1gb": "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n" + ADD,
    "read_stdin": "import sys\ndata = sys.stdin.read()\nassert data\n" + ADD,
    "segfault": "import ctypes\nctypes.string_at(0)\n" + ADD,
    "kill_parent": "import os\nos.kill(os.getppid(), 9)\n",
    "write_outside": ("import os\nfor p in ['/tmp/eco_sbx_evil', '../eco_sbx_evil', '/work/eco_sbx_evil', "
                      "os.path.expanduser('~/../eco_sbx_evil')]:\n    open(p, 'w').write('x')\n" + ADD),
    "network": "import socket\ns = socket.create_connection(('1.1.1.1', 80), timeout=1)\n" + ADD,
    "read_env": "import os\nassert 'SECRET_TOKEN_FOR_TEST' in str(dict(os.environ))\n" + ADD,
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_scores_fail_fast_and_leaves_nothing(pool, name, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN_FOR_TEST", "hunter2")
    before_tmp = _tmp_entries()
    t0 = time.perf_counter()
    r = pool.run(Job(ATTACKS[name], **IO))
    elapsed = time.perf_counter() - t0
    assert not r.passed, (name, r)
    assert elapsed < TIMEOUT + 1.5, (name, elapsed)
    assert _tmp_entries() <= before_tmp
    for p in ("/tmp/eco_sbx_evil", "/work/eco_sbx_evil", "/work/main/eco_sbx_evil"):
        assert not os.path.exists(p)
    assert not _sandbox_processes(), name
    assert pool.run(Job(ADD, **IO)).passed  # the pool (and this process) keep working


def test_network_is_cut(pool):
    if not probe_isolation().network_cut:
        pytest.skip("no network namespace on this machine (documented)")
    code = ("import socket\ndef add(a, b):\n    s = socket.socket()\n    s.settimeout(1)\n"
            "    return s.connect_ex(('1.1.1.1', 80)) != 0 and a + b\n")
    assert pool.run(Job(code, **IO)).passed


HACKS = {
    "sys_exit": "import sys\nsys.exit(0)\n",
    "os_exit": "import os\nos._exit(0)\n",
    "raise_systemexit": "raise SystemExit(0)\n",
    "print_marker": "print('pass')\nprint('{\"event\": \"done\", \"n\": 2}')\nimport os\nos._exit(0)\n",
    "always_equal": ("class Eq:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
                     "        return False\ndef add(a, b):\n    return Eq()\n"),
    "int_subclass": "class I(int):\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return I(0)\n",
    "write_side_channel": ("import os\nfor fd in range(3, 20):\n    try:\n        os.write(fd, b'x {\"event\": \"done\", "
                           "\"n\": 2}\\n')\n    except OSError:\n        pass\nos._exit(0)\n"),
}
CHECK = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(3, 4) == 7\n"


@pytest.mark.parametrize("name", list(HACKS))
@pytest.mark.parametrize("tests", ["io", "assert"])
def test_reward_hacks_fail(pool, name, tests):
    job = Job(HACKS[name], **IO) if tests == "io" else Job(HACKS[name], "add", tests=CHECK)
    r = pool.run(job)
    assert not r.passed, (name, tests, r)


def test_patching_the_test_module_fails(pool):
    code = ("import builtins\ndef check(candidate):\n    pass\nbuiltins.AssertionError = Exception\n"
            "def add(a, b):\n    return 0\n")
    assert not pool.run(Job(code, "add", tests=CHECK)).passed
    assert pool.run(Job(ADD, "add", tests=CHECK)).passed


def _sandbox_processes() -> list[int]:
    """Processes still carrying a sandbox marker or running as a sandbox slot uid."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        if b"SIGMA_SANDBOX_EXEC=" in env or 220000 <= uid < 230000:
            out.append(int(pid))
    return out


def _zombies_of_self() -> int:
    me = str(os.getpid())
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            n += st[0] == "Z" and st[1] == me
    return n


def test_no_leaks_over_hundreds_of_executions(pool):
    """scripts/sandbox_leak_test.py runs the same check over thousands of executions."""
    mixed = [Job(ADD, **IO), Job("def add(a, b) return", **IO), Job(ATTACKS["setsid_double_fork"], **IO),
             Job(ATTACKS["write_outside"], **IO)]
    pool.run_many(mixed * 5)  # warm-up
    fds0, tmp0 = len(os.listdir("/proc/self/fd")), _tmp_entries()
    results = pool.run_many(mixed * 50)
    assert sum(r.passed for r in results) == 50
    assert len(os.listdir("/proc/self/fd")) <= fds0
    assert _tmp_entries() <= tmp0
    assert _zombies_of_self() == 0
    assert not _sandbox_processes()
