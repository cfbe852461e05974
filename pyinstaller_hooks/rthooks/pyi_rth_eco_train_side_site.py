"""Runtime hook: the bundle's side site-packages folder (quack and the CuTe-DSL compiler) goes first on sys.path.

eco_train.spec ships those packages as plain files under ``<bundle>/site-packages`` rather than in the
frozen archive (quack fingerprints its functions by their file paths, and the compiler reads source).
The ``dsl_packages`` entry is what the nvidia-cutlass-dsl wheel's .pth file adds in a normal install.
It runs in every process the binary starts (compile workers, quack's compile pool, `eco_train -c`).
"""

import os
import sys


def _eco_train_side_site() -> None:
    site = os.path.join(sys._MEIPASS, "site-packages")
    if os.path.isdir(site):
        sys.path[:0] = [site, os.path.join(site, "nvidia_cutlass_dsl", "dsl_packages")]


_eco_train_side_site()
