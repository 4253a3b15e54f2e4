"""``python -m ww_callbacks``: the same command line as ``ww-callbacks`` (see `ww_callbacks.cli`).

Example:
    python -m ww_callbacks analyze model.ckpt --json report.json
"""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
