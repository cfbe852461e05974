"""Run scripts/bench_train.py with model.kernels.swiglu's launch shapes set to a sweep's best ones.

Needs swiglu_epilogue_fusion.patch applied. From the repo root, on the GPU machine:
    PYTHONPATH=. python3 ab_best.py SWEEP.json 124m --presets 124m --contenders sigma sigma_flip \
        --flip-ops swiglu_mlp --steps 8 --repeats 5 --warmup 3 --json OUT.json
"""

import json
import runpy
import sys
from pathlib import Path

from model.kernels import swiglu

sweep = json.loads(Path(sys.argv[1]).read_text())["presets"][sys.argv[2]]
swiglu.FWD_CONFIG = sweep["best_forward"]["config"]
swiglu.BWD_CONFIG = sweep["best_backward"]["config"]
print("swiglu configs", swiglu.FWD_CONFIG, swiglu.BWD_CONFIG, flush=True)
sys.argv = ["scripts/bench_train.py", *sys.argv[3:]]
runpy.run_path("scripts/bench_train.py", run_name="__main__")
