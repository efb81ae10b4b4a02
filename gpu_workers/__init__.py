"""The ML side of Context Lab: RoPE extension, training and evaluation, free of Django.

Everything here is importable from a notebook or a script on a GPU host; the web app talks to it
only through :class:`gpu_workers.spec.RunSpec` and the :class:`gpu_workers.reporter.Reporter` protocol.
"""
