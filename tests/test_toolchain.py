"""training/toolchain.py: VsDevCmd / vswhere / libtorch lookup order and the environment import,
with fake files and fake processes, so the Windows logic is checked on any OS."""

from __future__ import annotations

import pytest

from training import toolchain as tc

VS_INSTALL = r"C:\Program Files\Microsoft Visual Studio\2022\Community"
VS_DEVCMD = VS_INSTALL + r"\Common7\Tools\VsDevCmd.bat"
VSWHERE = r"C:\Program Files (x86)\Microsoft Visual Studio\Installer\vswhere.exe"
ENV = {"ProgramFiles(x86)": r"C:\Program Files (x86)", "PATH": r"C:\Windows\system32"}


def fake_files(*paths: str):
    present = set(paths)
    return lambda p: p in present


def no_run(cmd):
    raise AssertionError(f"nothing should be run, got {cmd!r}")


def test_vsdevcmd_seed_path_wins_over_vswhere():
    found = tc.find_vsdevcmd(env=ENV, exists=fake_files(tc.SEED_VSDEVCMD, VSWHERE, VS_DEVCMD), run=no_run)
    assert found == tc.SEED_VSDEVCMD


def test_vsdevcmd_from_vswhere_when_seed_path_is_missing():
    calls = []

    def run(cmd):
        calls.append(cmd)
        return "\r\n" + VS_INSTALL + "\r\n"

    found = tc.find_vsdevcmd(env=ENV, exists=fake_files(VSWHERE, VS_DEVCMD), run=run)
    assert found == VS_DEVCMD
    (cmd,) = calls
    assert cmd[0] == VSWHERE and "-latest" in cmd and "-prerelease" in cmd
    assert cmd[cmd.index("-property") + 1] == "installationPath"


def test_vsdevcmd_none_without_vs_or_when_vswhere_fails():
    assert tc.find_vsdevcmd(env=ENV, exists=fake_files(), run=no_run) is None

    def broken(cmd):
        raise OSError("vswhere crashed")

    assert tc.find_vsdevcmd(env=ENV, exists=fake_files(VSWHERE), run=broken) is None
    # vswhere names an install without VsDevCmd.bat (e.g. Build Tools only partly installed)
    assert tc.find_vsdevcmd(env=ENV, exists=fake_files(VSWHERE), run=lambda c: VS_INSTALL) is None


def test_vsdevcmd_override_and_env_var_come_first_and_are_not_replaced():
    mine = r"D:\VS\Common7\Tools\VsDevCmd.bat"
    files = fake_files(mine, tc.SEED_VSDEVCMD)
    assert tc.find_vsdevcmd(override=mine, env=ENV, exists=files, run=no_run) == mine
    assert tc.find_vsdevcmd(env={**ENV, tc.ENV_VSDEVCMD: mine}, exists=files, run=no_run) == mine
    # a given path that is missing is reported as missing, not swapped for another install
    assert tc.find_vsdevcmd(override=r"D:\nope.bat", env=ENV, exists=files, run=no_run) is None


def test_vswhere_location_follows_program_files_x86():
    assert tc.vswhere_path({"ProgramFiles(x86)": r"E:\PF86"}) == r"E:\PF86\Microsoft Visual Studio\Installer\vswhere.exe"
    assert tc.vswhere_path({}) == VSWHERE


def test_parse_env_dump_skips_hidden_and_banner_lines():
    text = ("=C:=C:\\work\r\n=ExitCode=00000000\r\n"
            "**********************************************************************\r\n"
            "** Visual Studio 2026 Developer Command Prompt v18.0\r\n"
            "PATH=C:\\VS\\bin;C:\\Windows\r\nINCLUDE=C:\\VS\\include\r\n"
            "CMAKE_CUDA_FLAGS=-Xcompiler=/EHsc\r\n\r\nVSCMD_VER=18.0.0\r\n")
    env = tc.parse_env_dump(text)
    assert env == {"PATH": r"C:\VS\bin;C:\Windows", "INCLUDE": r"C:\VS\include",
                   "CMAKE_CUDA_FLAGS": "-Xcompiler=/EHsc", "VSCMD_VER": "18.0.0"}


def test_import_vsdevcmd_env_copies_only_changes():
    env = {"PATH": r"C:\Windows", "HOME": r"C:\Users\me"}
    dump = "PATH=C:\\VS\\bin;C:\\Windows\nHOME=C:\\Users\\me\nINCLUDE=C:\\VS\\include\n"
    seen = []
    changed = tc.import_vsdevcmd_env(VS_DEVCMD, env=env, run=lambda cmd: seen.append(cmd) or dump)
    assert changed == {"PATH": r"C:\VS\bin;C:\Windows", "INCLUDE": r"C:\VS\include"}
    assert env["INCLUDE"] == r"C:\VS\include" and env["HOME"] == r"C:\Users\me"
    (cmd,) = seen
    assert cmd.startswith('cmd.exe /d /s /c ""' + VS_DEVCMD + '" ') and cmd.endswith('&& set"')
    assert "-arch=x64" in cmd


def test_export_nvcc_flags_appends_once_and_keeps_existing():
    env = {"CUDAFLAGS": "-O3"}
    tc.export_nvcc_flags(env)
    tc.export_nvcc_flags(env)
    assert env == {"TORCH_NVCC_FLAGS": "--allow-unsupported-compiler",
                   "CUDAFLAGS": "-O3 --allow-unsupported-compiler",
                   "CMAKE_CUDA_FLAGS": "--allow-unsupported-compiler"}


def test_libtorch_lookup_order():
    first, second = tc.SEED_LIBTORCH
    assert first == r"C:\test5\my_eco_llm\libtorch" and second == r"C:\test5\libtorch"
    assert tc.find_libtorch(env={}, is_dir=fake_files(first, second)) == first
    assert tc.find_libtorch(env={}, is_dir=fake_files(second)) == second
    assert tc.find_libtorch(env={}, is_dir=fake_files()) is None
    mine = r"D:\libtorch"
    assert tc.find_libtorch(override=mine, env={}, is_dir=fake_files(mine, first)) == mine
    assert tc.find_libtorch(env={tc.ENV_LIBTORCH: mine}, is_dir=fake_files(mine, first)) == mine
    assert tc.find_libtorch(override=r"D:\nope", env={}, is_dir=fake_files(first)) is None


def test_bootstrap_windows_imports_vsdevcmd_then_finds_cl():
    env = dict(ENV)
    cl = r"C:\VS\VC\bin\cl.exe"
    dump = f"PATH=C:\\VS\\VC\\bin;{ENV['PATH']}\nINCLUDE=C:\\VS\\include\n"
    facts = tc.bootstrap_toolchain(env=env, platform="win32", run=lambda cmd: dump,
                                   exists=fake_files(tc.SEED_VSDEVCMD, cl), is_dir=fake_files(tc.SEED_LIBTORCH[1]))
    assert facts == {"vs2026_toolchain_ready": 1, "toolchain_compiler": cl, "vsdevcmd_path": tc.SEED_VSDEVCMD,
                     "libtorch_path": tc.SEED_LIBTORCH[1]}
    assert env["INCLUDE"] == r"C:\VS\include"
    assert all("--allow-unsupported-compiler" in env[v] for v in tc.NVCC_FLAG_VARS)


def test_bootstrap_windows_without_vs_reports_0_but_exports_flags():
    env = dict(ENV)
    facts = tc.bootstrap_toolchain(env=env, platform="win32", run=no_run, exists=fake_files(), is_dir=fake_files())
    assert facts["vs2026_toolchain_ready"] == 0 and facts["toolchain_compiler"] is None
    assert facts["libtorch_path"] is None
    assert env["TORCH_NVCC_FLAGS"] == "--allow-unsupported-compiler"


def test_bootstrap_windows_skips_vsdevcmd_inside_a_developer_prompt():
    cl = r"C:\VS\VC\bin\cl.exe"
    env = {**ENV, "PATH": r"C:\VS\VC\bin;C:\Windows"}
    facts = tc.bootstrap_toolchain(env=env, platform="win32", run=no_run, exists=fake_files(cl), is_dir=fake_files())
    assert facts["vs2026_toolchain_ready"] == 1 and facts["toolchain_compiler"] == cl


@pytest.mark.parametrize(("env", "tools", "expect"), [
    ({}, {"gcc": "/usr/bin/gcc", "clang": "/usr/bin/clang"}, "/usr/bin/gcc"),
    ({}, {"clang": "/usr/bin/clang"}, "/usr/bin/clang"),
    ({"CC": "cc-13"}, {"cc-13": "/opt/bin/cc-13", "gcc": "/usr/bin/gcc"}, "/opt/bin/cc-13"),
    ({}, {}, None),
])
def test_linux_c_compiler_search_matches_triton(env, tools, expect):
    assert tc.find_c_compiler(env, which=tools.get) == expect


def test_bootstrap_linux_on_this_machine_reports_facts():
    env = {"PATH": "/nonexistent"}
    facts = tc.bootstrap_toolchain(env=env, platform="linux", run=no_run, is_dir=fake_files())
    assert facts == {"vs2026_toolchain_ready": 0, "toolchain_compiler": None, "libtorch_path": None}
    assert "TORCH_NVCC_FLAGS" not in env  # the nvcc flag is a Windows (MSVC) workaround only
