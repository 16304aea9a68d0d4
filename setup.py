"""Build the optional C accelerator (detector/dns/_cwire.c). Everything else is in
pyproject.toml. If no C compiler is present the build goes on without it and
detector.dns.wire uses its pure-Python decoder (same output, slower)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("detector.dns._cwire", ["detector/dns/_cwire.c"],
                             optional=True, extra_compile_args=["-O2"])])
