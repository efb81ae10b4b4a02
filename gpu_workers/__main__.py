"""``python -m gpu_workers run --spec spec.json``: see :mod:`gpu_workers.cli`."""

from gpu_workers.cli import main

raise SystemExit(main())
