"""``python -m harness`` — same as the ``hyperhive-agent`` script.

For ``serve`` the web UI's socket is opened and answered (:mod:`harness.earlyweb`, the
standard library only) before anything else is imported: the local driver starts the
harness this way, and the import of the rest is most of its start-up.
"""

import os
import sys

if sys.argv[1:2] == ["serve"]:
    from harness import earlyweb

    earlyweb.start(os.environ)

from harness.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
