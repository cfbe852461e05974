"""Runtime hook: the frozen eco_train binary doubles as the Python interpreter it was built with.

A frozen program has no `python` beside it, and `sys.executable` is the binary itself, so every
library that starts "a Python" as `[sys.executable, ...]` starts eco_train instead:
  - torch.compile's compile workers: `[sys.executable, .../compile_worker/__main__.py, --workers=N, ...]`
  - multiprocessing helpers: `[sys.executable, -c, "from multiprocessing.resource_tracker import main..."]`
  - the GRPO sandbox (planned): `[sys.executable, -I, -c, HARNESS]` for model-written code.
This hook runs before the entry script and, when the first argument is a Python interpreter option
(`-c CODE`, `-m MODULE`, `-I`, `-E`, `-s`, `-S`, `-u`, `-B`, `-P`, `-O`, `-X opt`, `-W arg`) or a
path ending in `.py`, behaves like `python` with those arguments and exits with its status. No
eco_train flag starts with a single dash or ends in `.py`, so the two never collide; `--run-python`
is accepted as an explicit prefix (`eco_train --run-python -c "print(1)"`).

The stdlib the bundle carries is what the trainer imports plus the list in eco_train.spec
(SANDBOX_STDLIB), so sandboxed code can import the usual modules without a system Python.
"""


def _eco_train_python() -> None:
    import sys

    argv = sys.argv[1:]
    if argv[:1] == ["--run-python"]:
        argv = argv[1:]
    elif not argv or argv[0] == "-h" or not (argv[0].endswith(".py") or argv[0][:1] == "-" != argv[0][1:2]):
        return  # an ordinary eco_train command line (`-h` stays argparse's help)

    # Interpreter options that change nothing in a frozen program (no site, no PYTHON* variables,
    # no bytecode writing) are accepted and skipped; -u is honoured; -X/-W take a value; a combined
    # form (`-Ic CODE`, `-cCODE`) splits at its c or m like CPython's.
    isolated = False
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-c", "-m", "-"):
        opt = argv[i]
        if opt in ("-X", "-W"):
            i += 2
            continue
        if opt.startswith(("-X", "-W")):
            i += 1
            continue
        flags = opt[1:]
        cut = min((flags.index(k) for k in "cm" if k in flags), default=None)
        simple = flags if cut is None else flags[:cut]
        isolated = isolated or "I" in simple or "P" in simple
        if "u" in simple:
            sys.stdout.reconfigure(line_buffering=True)
            sys.stderr.reconfigure(line_buffering=True)
        if cut is not None:
            value = flags[cut + 1:]
            argv = [*argv[:i], "-" + flags[cut], *([value] if value else []), *argv[i + 1:]]
            break
        i += 1
    rest = argv[i:]
    if not rest or rest[0] == "-":  # `python -` or no program: read it from stdin, as CPython does
        rest = ["-c", sys.stdin.read(), *rest[1:]]

    import contextlib
    import runpy

    def flush_std_streams() -> None:
        # As CPython at exit: a stream the program closed is skipped, and a flush that fails on a gone
        # reader is not an error here. (A child of a compiled GPU run closed its stdout and the plain
        # flush raised "I/O operation on closed file" after the run had finished.)
        for stream in (sys.stdout, sys.stderr):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()

    try:
        if rest[:1] == ["-c"]:
            if len(rest) < 2:
                print("eco_train: -c needs a program string", file=sys.stderr)
                raise SystemExit(2)
            sys.argv = ["-c", *rest[2:]]
            if not isolated:
                sys.path.insert(0, "")
            code = compile(rest[1], "<string>", "exec")
            main = sys.modules["__main__"]
            glb = {"__name__": "__main__", "__builtins__": __builtins__, "__doc__": None, "__spec__": None}
            main.__dict__.clear()
            main.__dict__.update(glb)
            exec(code, main.__dict__)
        elif rest[:1] == ["-m"]:
            if len(rest) < 2:
                print("eco_train: -m needs a module name", file=sys.stderr)
                raise SystemExit(2)
            sys.argv = [rest[1], *rest[2:]]
            if not isolated:
                sys.path.insert(0, "")
            runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
        elif rest:
            import os

            sys.argv = list(rest)
            if not isolated:
                sys.path.insert(0, os.path.dirname(os.path.abspath(rest[0])))
            runpy.run_path(rest[0], run_name="__main__")
        else:
            print("eco_train: Python mode needs -c CODE, -m MODULE or a script path", file=sys.stderr)
            raise SystemExit(2)
    except SystemExit:
        raise
    except BaseException:
        import traceback

        flush_std_streams()
        traceback.print_exc()
        flush_std_streams()
        raise SystemExit(1) from None
    flush_std_streams()
    raise SystemExit(0)


_eco_train_python()
del _eco_train_python
