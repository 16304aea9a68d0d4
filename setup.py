"""Build the optional C accelerators (detector/dns/_cwire.c, detector/detect/dga/_cdga.c). Everything else is in
pyproject.toml. If no C compiler is present the build goes on without it and
detector.dns.wire uses its pure-Python decoder (same output, slower)."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("detector.dns._cwire", ["detector/dns/_cwire.c"],
              optional=True, extra_compile_args=["-O2"]),
    # no FMA contraction: the DGA features must match numpy's bit for bit
    Extension("detector.detect.dga._cdga", ["detector/detect/dga/_cdga.c"],
              optional=True, extra_compile_args=["-O2", "-ffp-contract=off"]),
])
