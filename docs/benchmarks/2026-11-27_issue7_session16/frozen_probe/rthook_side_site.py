# The side site-packages shipped inside the bundle as plain files: quack and the CuTe-DSL compiler.
import os
import sys

_site = os.path.join(sys._MEIPASS, "site-packages")
sys.path[:0] = [_site, os.path.join(_site, "nvidia_cutlass_dsl", "dsl_packages")]  # the wheel's .pth adds the second
