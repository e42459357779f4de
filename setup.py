"""Build of kexue's compiled extension (the BytePiece tokenizer core).

All package metadata lives in ``pyproject.toml``; this file only declares the extension module. The
extension is optional: if Cython or a C compiler is missing, the package still installs and
``kexue.tokenizers`` runs on its pure-Python reference core (same results, slower).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - depends on the build environment
    cythonize = None


class BuildExt(build_ext):
    """Adds GCC/Clang flags that keep floating point bit-exact with the pure-Python reference."""

    def build_extensions(self):
        if self.compiler.compiler_type != "msvc":
            for ext in self.extensions:
                ext.extra_compile_args += ["-O3", "-ffp-contract=off", "-fno-fast-math"]
        super().build_extensions()


ext_modules = []
if cythonize is not None:
    ext_modules = cythonize(
        [Extension("kexue.tokenizers._core", ["src/kexue/tokenizers/_core.pyx"], optional=True)],
        language_level=3,
        quiet=True,
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
