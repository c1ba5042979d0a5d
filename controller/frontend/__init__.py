"""Custom agent front-ends (``spec.frontend``): path rules and the files the dashboard serves.

- ``paths``: pure checks of ``frontend.dist`` / ``frontend.extraFiles`` (run whenever a
  manifest is parsed: the push hook, proposals, every pass);
- ``files``: reads those files from the meta repo at main (operator-approved content only).

The design (why the dashboard serves them sandboxed, from git, never from the agent) is in
docs/architecture.md "Custom agent front-ends".
"""
