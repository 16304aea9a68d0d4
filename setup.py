"""Build the optional C accelerators (detector/dns/_cwire.c, detector/capture/_cframe.c,
detector/detect/dga/_cdga.c). Everything else is in
pyproject.toml. If no C compiler is present the build goes on without it and
detector.dns.wire uses its pure-Python decoder (same output, slower)."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("detector.dns._cwire", ["detector/dns/_cwire.c"],
              optional=True, extra_compile_args=["-O2"]),
    # classic pcap records to events (uses _cwire's decoder); no FMA contraction: the
    # timestamps must be the doubles Python computes
    Extension("detector.capture._cframe", ["detector/capture/_cframe.c"],
              optional=True, extra_compile_args=["-O2", "-ffp-contract=off"]),
    # no FMA contraction: the DGA features must match numpy's bit for bit
    Extension("detector.detect.dga._cdga", ["detector/detect/dga/_cdga.c"],
              optional=True, extra_compile_args=["-O2", "-ffp-contract=off"]),
])
