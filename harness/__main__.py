"""``python -m harness`` — same as the ``hyperhive-agent`` script."""

from harness.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
