"""kexue: techniques from the blog Scientific Spaces (kexue.fm) as tested PyTorch code.

Each technique is a plain building block in a subpackage (``kexue.retry``, ``kexue.quantizers``,
``kexue.nn``, ...); each post's central claim is re-run as an experiment in ``kexue.repro``.
"""

__version__ = "0.1.0"
