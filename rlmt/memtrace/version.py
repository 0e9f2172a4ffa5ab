"""The tracer's version: part of every cache key, so a change to what a trace reports invalidates old entries.

Bump it with any change to :mod:`rlmt.memtrace.tracer`, :mod:`rlmt.memtrace.jobs`, :mod:`rlmt.memtrace.models`,
:mod:`rlmt.memtrace.gpu_kernels` or :mod:`rlmt.memtrace.flops` that changes the numbers a trace reports.
(Kept apart from the tracer so that a warm cache lookup imports no torch.)
"""

TRACER_VERSION = "1"
