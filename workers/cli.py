"""``python -m workers.cli workers.main [options]``: Dramatiq's command line in Hookgate's log
format; what ``hookgate worker`` and ``hookgate run`` start.

Dramatiq's CLI sets up logging with its text format in its parent process, which never imports
Hookgate's code, and in each worker process before that imports :mod:`workers.main`. Run through
this module, the parent is configured by :func:`gateway.logs.configure_dramatiq_parent` first, and
each worker process by :mod:`workers.main`. In the text format this is ``python -m dramatiq``.
"""

from __future__ import annotations

import sys

from dramatiq.cli import main, make_argument_parser

from gateway.errors import ConfigError
from gateway.logs import configure_dramatiq_parent

if __name__ == "__main__":  # a worker process started by spawn imports this module too
    try:
        configure_dramatiq_parent()
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    args = make_argument_parser().parse_args()
    # Dramatiq reloads on SIGHUP by executing sys.argv again: this module's command, not its file.
    sys.argv = [sys.executable, "-m", __spec__.name, *sys.argv[1:]]
    sys.exit(main(args))
