"""The harness that runs *inside* a sandbox child (standard library only; started as `python -I -c`).

It is trusted code sharing a process with untrusted code, so it does its trusted work first:
read the job from the fd named in argv[1] (then close it), set the resource limits, drop root to the slot's uid, and
only then compile and run the candidate. Results go to the fd named in argv[2], the side channel, one line each:
`<token> <json>`. The parent decides pass/fail from those lines only (never exit code or stdout).

Two test kinds:
- "io": the job holds only the *inputs*; the harness calls the entry point on each and reports a
  strict, type-tagged encoding of what came back. Expected outputs never enter the sandbox, so the
  candidate cannot forge a pass: it must compute the answers (an object whose `__eq__` is always
  true has no encoding; a patched harness or an early exit yields missing or wrong answers).
- "assert": HumanEval-style test code with a `check(candidate)` function. `==`/`!=` inside the test
  code are rewritten to a type-strict comparison and each executed `assert` is counted; builtins are
  restored before the tests run. This shares the interpreter with the candidate, so a candidate
  written to dig the token out of the harness's memory could forge a pass (see README).
"""

import contextlib
import os
import sys

PREIMPORT = (
    "bisect", "collections", "copy", "fractions", "functools", "heapq", "itertools", "math", "operator",
    "random", "re", "socket", "string", "typing",
)
"""imported before privileges are dropped (a subset of SANDBOX_STDLIB in eco_train.spec); each costs
start-up time on every execution (~25 ms for this set), so the list stays short."""


def main() -> None:
    import ast
    import json

    job_fd, side_fd = int(sys.argv[1]), int(sys.argv[2])
    with os.fdopen(job_fd, "rb") as f:
        job = json.loads(f.read())
    token = job["token"]
    write, dumps, exit_now = os.write, json.dumps, os._exit

    def report(obj: dict) -> None:
        try:
            write(side_fd, (token + " " + dumps(obj) + "\n").encode())
        except Exception:  # noqa: BLE001 - a closed side channel means the parent gave up
            exit_now(3)

    # --- limits and privileges (before any untrusted byte is compiled) -------------------------
    if os.name == "posix":
        import resource

        lim = job["limits"]
        pairs = {
            "cpu_s": (resource.RLIMIT_CPU, lim["cpu_s"], lim["cpu_s"] + 1),
            "address_space_bytes": (resource.RLIMIT_AS, lim["address_space_bytes"], lim["address_space_bytes"]),
            "file_size_bytes": (resource.RLIMIT_FSIZE, lim["file_size_bytes"], lim["file_size_bytes"]),
            "open_files": (resource.RLIMIT_NOFILE, lim["open_files"], lim["open_files"]),
            "processes": (resource.RLIMIT_NPROC, lim["processes"], lim["processes"]),
        }
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        for rl, soft, hard in pairs.values():
            if soft:
                resource.setrlimit(rl, (soft, hard))
        if job.get("private_tmp"):  # /tmp is this namespace's own tmpfs: the work folder lives there
            os.mkdir("/tmp/work", 0o700)
            if job.get("uid") is not None:
                os.chown("/tmp/work", job["uid"], job["uid"])
            os.chdir("/tmp/work")
        if job.get("uid") is not None and os.geteuid() == 0:
            # The interpreter may live where the slot's uid cannot read (e.g. under /root), so the
            # standard-library modules programs commonly use are imported while still root.
            for name in PREIMPORT:
                with contextlib.suppress(ImportError):
                    __import__(name)
            os.setgroups([])
            os.setgid(job["uid"])
            os.setuid(job["uid"])
        os.environ["HOME"] = os.environ["TMPDIR"] = os.getcwd()

    # --- the candidate ------------------------------------------------------------------------
    import builtins

    saved_builtins = dict(builtins.__dict__)
    try:
        code = compile(job["code"], "<candidate>", "exec")
    except (SyntaxError, ValueError) as e:
        report({"event": "error", "kind": "syntax_error", "detail": str(e)[:200]})
        return
    ns: dict = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(code, ns)
    except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt are failures too
        report({"event": "error", "kind": "exception", "detail": type(e).__name__})
        return
    builtins.__dict__.clear()
    builtins.__dict__.update(saved_builtins)
    fn = ns.get(job["entry_point"])
    if not callable(fn):
        report({"event": "error", "kind": "missing_entry_point", "detail": job["entry_point"]})
        return

    if job["kind"] == "io":
        import copy

        for i, args in enumerate(job["inputs"]):
            try:
                out = {"ok": encode(fn(*copy.deepcopy(args)))}
            except BaseException as e:  # noqa: BLE001
                out = {"err": type(e).__name__}
            report({"event": "result", "i": i, **out})
        report({"event": "done", "n": len(job["inputs"])})
        return

    # assert kind: count the asserts that actually ran, compare strictly
    counter = [0]

    def strict_eq(a, b) -> bool:
        # Both sides must be plain built-in values (no subclasses, no custom __eq__), so the
        # `==` below is the built-in one and 2 == 2.0 still holds as in the original test.
        return encode_or_none(a) is not None and encode_or_none(b) is not None and a == b

    def counted(cond) -> bool:
        counter[0] += 1
        return cond

    class Rewrite(ast.NodeTransformer):
        def visit_Compare(self, node):  # noqa: N802 - ast's naming
            self.generic_visit(node)
            if len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.NotEq)):
                call = ast.Call(ast.Name("__sigma_eq__", ast.Load()), [node.left, node.comparators[0]], [])
                return call if isinstance(node.ops[0], ast.Eq) else ast.UnaryOp(ast.Not(), call)
            return node

        def visit_Assert(self, node):  # noqa: N802
            self.generic_visit(node)
            node.test = ast.Call(ast.Name("__sigma_count__", ast.Load()), [node.test], [])
            return node

    try:
        tree = ast.fix_missing_locations(Rewrite().visit(ast.parse(job["tests"])))
        test_code = compile(tree, "<tests>", "exec")
    except SyntaxError as e:
        report({"event": "error", "kind": "bad_tests", "detail": str(e)[:200]})
        return
    tns = {"__name__": "__tests__", "__builtins__": dict(saved_builtins),
           "__sigma_eq__": strict_eq, "__sigma_count__": counted}
    try:
        exec(test_code, tns)
        tns["check"](fn)
    except AssertionError:
        report({"event": "error", "kind": "wrong_answer", "detail": f"assert {counter[0]} failed"})
        return
    except BaseException as e:  # noqa: BLE001
        report({"event": "error", "kind": "exception", "detail": type(e).__name__})
        return
    report({"event": "done", "n": counter[0]})


def encode(x, depth: int = 0):
    """Strict, type-tagged JSON form of plain Python values; anything else raises TypeError."""
    if depth > 50:
        raise TypeError("too deep")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return {"int": str(x)} if abs(x) > 2**53 else x
    if t is float:
        return {"float": repr(x)}
    if t is list:
        return [encode(v, depth + 1) for v in x]
    if t is tuple:
        return {"tuple": [encode(v, depth + 1) for v in x]}
    if t is dict:
        items = [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]
        return {"dict": sorted(items, key=lambda kv: repr(kv[0]))}
    if t is set or t is frozenset:
        return {"set": sorted((encode(v, depth + 1) for v in x), key=repr)}
    raise TypeError(f"unsupported result type {t.__name__}")


def encode_or_none(x):
    try:
        return encode(x)
    except TypeError:
        return None


if __name__ == "__main__":
    main()
    sys.stdout.flush()
