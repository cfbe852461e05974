"""Native toolchain bootstrap (seed: "CUDA / VS2026 / libtorch"): what Triton, torch.compile and
CUDA extension builds need from the machine, found once at start-up and logged as facts.

Windows: find `VsDevCmd.bat` (an explicit path or ECO_TRAIN_VSDEVCMD first, then the seed's VS 2026
Insiders path, then the newest install `vswhere` reports), run it once and import the environment it
sets (PATH, INCLUDE, LIB, ...) into this process, so `cl.exe` is found by Triton / torch.compile /
nvcc; export `--allow-unsupported-compiler` through TORCH_NVCC_FLAGS, CUDAFLAGS and CMAKE_CUDA_FLAGS
(CUDA 12.8's nvcc does not yet know VS 2026's compiler version). `vs2026_toolchain_ready=1` when
`cl.exe` is then on PATH.
Linux: Triton compiles a small C launcher per kernel with `$CC`, gcc or clang (the same search
Triton does); `vs2026_toolchain_ready=1` when one exists, so the fact means "the native compiler
Triton needs is there" on both systems.
Both: libtorch is looked up in the seed's order (an explicit path or ECO_TRAIN_LIBTORCH, then
`C:\\test5\\my_eco_llm\\libtorch`, then `C:\\test5\\libtorch`); `libtorch_path` is null when none exists.

Everything takes its file-system, environment and process access as arguments, so the path logic
and the environment parsing are tested with fake files on any OS (tests/test_toolchain.py).
Standard library only; costs one `cmd /c` (~1-2 s) on Windows when VsDevCmd must run, nothing on Linux.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import PureWindowsPath

SEED_VSDEVCMD = r"C:\Program Files\Microsoft Visual Studio\18\Insiders\Common7\Tools\VsDevCmd.bat"
SEED_LIBTORCH = (r"C:\test5\my_eco_llm\libtorch", r"C:\test5\libtorch")
VSWHERE_DEFAULT = r"%ProgramFiles(x86)%\Microsoft Visual Studio\Installer\vswhere.exe"
NVCC_FLAG = "--allow-unsupported-compiler"
NVCC_FLAG_VARS = ("TORCH_NVCC_FLAGS", "CUDAFLAGS", "CMAKE_CUDA_FLAGS")
ENV_VSDEVCMD = "ECO_TRAIN_VSDEVCMD"
ENV_LIBTORCH = "ECO_TRAIN_LIBTORCH"

Runner = Callable[[list[str] | str], str]
"""Runs a command (an argument list, or on Windows a verbatim command line) and returns its stdout;
raises OSError / subprocess.SubprocessError on failure."""


def _run_stdout(cmd: list[str] | str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout


# ----------------------------------------------------------------------------------------------
# Windows: VsDevCmd.bat


def vswhere_path(env: Mapping[str, str]) -> str:
    """Where the Visual Studio installer keeps vswhere.exe (%ProgramFiles(x86)% expanded from `env`)."""
    base = env.get("ProgramFiles(x86)") or env.get("PROGRAMFILES(X86)") or r"C:\Program Files (x86)"
    return str(PureWindowsPath(base, "Microsoft Visual Studio", "Installer", "vswhere.exe"))


def find_vsdevcmd(*, override: str | None = None, env: Mapping[str, str] = os.environ,
                  exists: Callable[[str], bool] = os.path.isfile, run: Runner = _run_stdout) -> str | None:
    """The VsDevCmd.bat to use: `override`, $ECO_TRAIN_VSDEVCMD, the seed's VS 2026 Insiders path,
    then the newest Visual Studio (prereleases included) with the C++ tools that vswhere reports.

    An override that does not exist is not silently replaced by another install: it returns None,
    and the caller logs vs2026_toolchain_ready=0 with the path it was given.
    """
    explicit = override or env.get(ENV_VSDEVCMD)
    if explicit:
        return explicit if exists(explicit) else None
    if exists(SEED_VSDEVCMD):
        return SEED_VSDEVCMD
    vswhere = vswhere_path(env)
    if not exists(vswhere):
        return None
    try:
        out = run([vswhere, "-latest", "-prerelease", "-products", "*", "-requires",
                   "Microsoft.VisualStudio.Component.VC.Tools.x86.x64", "-property", "installationPath"])
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.strip():
            candidate = str(PureWindowsPath(line.strip(), "Common7", "Tools", "VsDevCmd.bat"))
            if exists(candidate):
                return candidate
    return None


def parse_env_dump(text: str) -> dict[str, str]:
    """Parse `cmd /c set` output (NAME=value per line) into a dict.

    cmd's hidden per-drive variables (`=C:=C:\\...`, `=ExitCode=...`) start with `=` and are
    skipped; a value may itself contain `=`; blank or banner lines without `=` are ignored.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.rstrip("\r")
        if not line or line.startswith("=") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        if name.strip() != name or " " in name:  # not a variable line (e.g. a VsDevCmd banner)
            continue
        out[name] = value
    return out


def vsdevcmd_command(vsdevcmd: str, arch: str = "x64") -> str:
    """The `cmd` line that runs VsDevCmd quietly, then prints the resulting environment.

    A string, not a list: Python would re-quote list items for Windows, and `cmd /s /c "..."`
    needs the inner quotes around the path verbatim (/s strips only the outermost pair).
    """
    return f'cmd.exe /d /s /c ""{vsdevcmd}" -no_logo -arch={arch} -host_arch={arch} >nul 2>&1 && set"'


def import_vsdevcmd_env(vsdevcmd: str, *, env: MutableMapping[str, str] = os.environ, run: Runner = _run_stdout,
                        arch: str = "x64") -> dict[str, str]:
    """Run VsDevCmd.bat and copy every variable it set or changed into `env`; returns the changes."""
    after = parse_env_dump(run(vsdevcmd_command(vsdevcmd, arch)))
    upper = {k.upper(): v for k, v in env.items()}  # Windows variable names are case-insensitive
    changed = {k: v for k, v in after.items() if upper.get(k.upper()) != v}
    env.update(changed)
    return changed


def export_nvcc_flags(env: MutableMapping[str, str] = os.environ, flag: str = NVCC_FLAG) -> None:
    """Append `flag` to TORCH_NVCC_FLAGS, CUDAFLAGS and CMAKE_CUDA_FLAGS (once; existing flags kept)."""
    for var in NVCC_FLAG_VARS:
        current = env.get(var, "")
        if flag not in current.split():
            env[var] = f"{current} {flag}".strip()


def find_on_path(name: str, env: Mapping[str, str], *, windows: bool,
                 exists: Callable[[str], bool] = os.path.isfile) -> str | None:
    """shutil.which against `env`'s PATH (so an imported VsDevCmd environment is what is searched)."""
    path = next((v for k, v in env.items() if k.upper() == "PATH"), "")
    if windows:  # shutil.which would use the host's separator; split the Windows PATH ourselves
        for d in filter(None, path.split(";")):
            candidate = str(PureWindowsPath(d.strip('"'), name))
            if exists(candidate):
                return candidate
        return None
    return shutil.which(name, path=path)


# ----------------------------------------------------------------------------------------------
# Both systems


def find_c_compiler(env: Mapping[str, str] = os.environ,
                    which: Callable[[str], str | None] = shutil.which) -> str | None:
    """The C compiler Triton will use for its launchers: $CC, else gcc, else clang (Triton's order)."""
    cc = env.get("CC")
    if cc:
        return which(cc) or (cc if os.path.isabs(cc) and os.path.isfile(cc) else None)
    return which("gcc") or which("clang")


def find_libtorch(*, override: str | None = None, env: Mapping[str, str] = os.environ,
                  is_dir: Callable[[str], bool] = os.path.isdir) -> str | None:
    """libtorch in the seed's order: `override`, $ECO_TRAIN_LIBTORCH, then the seed's two folders.

    As with VsDevCmd, a given path that does not exist yields None rather than another folder.
    """
    explicit = override or env.get(ENV_LIBTORCH)
    if explicit:
        return explicit if is_dir(explicit) else None
    for candidate in SEED_LIBTORCH:
        if is_dir(candidate):
            return candidate
    return None


def bootstrap_toolchain(*, vsdevcmd: str | None = None, libtorch: str | None = None,
                        env: MutableMapping[str, str] = os.environ, platform: str = sys.platform,
                        run: Runner = _run_stdout, exists: Callable[[str], bool] = os.path.isfile,
                        is_dir: Callable[[str], bool] = os.path.isdir) -> dict[str, object]:
    """Prepare the native toolchain for this process and return the start-up facts to log:
    `vs2026_toolchain_ready` (0|1), `toolchain_compiler`, `vsdevcmd_path` (Windows), `libtorch_path`.

    Windows: VsDevCmd is run only when `cl.exe` is not already on PATH (e.g. started from a
    Developer prompt); nvcc flags are exported either way. Never raises: a missing toolchain is a
    fact (0), and only Triton / torch.compile paths that need it fail later, with their own message.
    """
    facts: dict[str, object] = {}
    windows = platform.startswith("win")
    if windows:
        cl = find_on_path("cl.exe", env, windows=True, exists=exists)
        path = None
        if cl is None:
            path = find_vsdevcmd(override=vsdevcmd, env=env, exists=exists, run=run)
            if path is not None:
                with contextlib.suppress(OSError, subprocess.SubprocessError):  # reported as ready=0
                    import_vsdevcmd_env(path, env=env, run=run)
                cl = find_on_path("cl.exe", env, windows=True, exists=exists)
        export_nvcc_flags(env)
        facts["vs2026_toolchain_ready"] = int(cl is not None)
        facts["toolchain_compiler"] = cl
        facts["vsdevcmd_path"] = path or vsdevcmd or env.get(ENV_VSDEVCMD)
    else:
        search_path = next((v for k, v in env.items() if k.upper() == "PATH"), "")
        cc = find_c_compiler(env, which=lambda name: shutil.which(name, path=search_path))
        facts["vs2026_toolchain_ready"] = int(cc is not None)
        facts["toolchain_compiler"] = cc
    facts["libtorch_path"] = find_libtorch(override=libtorch, env=env, is_dir=is_dir)
    return facts
