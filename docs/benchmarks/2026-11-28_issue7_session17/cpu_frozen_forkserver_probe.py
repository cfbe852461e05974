# ruff: noqa  (kept as it was run, apart from this line; see cpu_frozen_forkserver_probe.txt)
import multiprocessing as mp, os
from concurrent.futures import ProcessPoolExecutor

def where():
    import sys, quack
    return os.getpid(), quack.__file__, "quack.cache._pool_preload" in sys.modules

if __name__ == "__main__":
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["quack.cache._pool_preload"])
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
        print(ex.submit(where).result(timeout=120), os.getpid())
