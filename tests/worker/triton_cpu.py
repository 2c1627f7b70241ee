"""Run the real Triton kernels (liger-kernel's) on CPU tensors through Triton's interpreter.

``TRITON_INTERPRET=1`` makes ``triton.jit`` return an interpreted function that executes the
kernel body with numpy on the host. Two gaps of the interpreter (triton 3.9) keep Liger's
RMSNorm from running there, and are closed here for the tests only:

- a Python ``float`` argument reaches the kernel as a plain float, while compiled Triton passes
  it as an fp32 scalar (``eps.to(tl.float32)`` then fails): it is wrapped as an fp32 scalar, as
  the compiled launcher does;
- ``libdevice.rsqrt`` / ``libdevice.tanh`` (CUDA's libdevice) have no interpreter
  implementation (they return None): interpretable stubs ``1 / sqrt(x)`` and
  ``2 sigmoid(2x) - 1`` stand in.

``TRITON_INTERPRET=1`` itself must be set before triton is first imported (triton's own library
functions, ``tl.max`` and the like, are decorated then): tests/conftest.py sets it on a machine
without a GPU. :func:`enable` (the shims) must run before ``liger_kernel`` is imported;
:func:`check_interpreted` fails, rather than skips, when either came too late.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import triton
import triton.language as tl


# the kernel body's globals must hold triton.language: these live at module level
@triton.jit
def rsqrt(x):
    return 1.0 / tl.sqrt(x)


@triton.jit
def tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


def enable() -> None:
    import triton.language.extra.libdevice as libdevice
    from triton.runtime import interpreter

    if not getattr(interpreter._implicit_cvt, "vlstudio_shim", False):
        original = interpreter._implicit_cvt

        def implicit_cvt(arg):
            if isinstance(arg, float):
                return tl.tensor(interpreter.TensorHandle(np.array([arg], dtype=np.float32), tl.float32), tl.float32)
            return original(arg)

        implicit_cvt.vlstudio_shim = True
        interpreter._implicit_cvt = implicit_cvt

    stubs = {"rsqrt": rsqrt, "tanh": tanh}
    for name, fn in stubs.items():
        setattr(libdevice, name, fn)
    # Liger modules imported already took the libdevice functions by name
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("liger_kernel.ops") and mod is not None:
            for name, fn in stubs.items():
                if name in vars(mod):
                    setattr(mod, name, fn)


def check_interpreted() -> None:
    """Fail (not skip) when triton or Liger's kernels were decorated before interpretation was on."""
    import triton.language.standard as standard
    from liger_kernel.ops import rms_norm
    from triton.runtime.interpreter import InterpretedFunction

    if os.environ.get("TRITON_INTERPRET") != "1" or not isinstance(standard.max, InterpretedFunction):
        raise RuntimeError("TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does "
                           "on a machine without a GPU)")
    if not isinstance(rms_norm._rms_norm_forward_kernel, InterpretedFunction):
        raise RuntimeError("liger_kernel was imported before TRITON_INTERPRET=1 was set: its kernels are compiled "
                           "ones, which cannot run on CPU tensors")
