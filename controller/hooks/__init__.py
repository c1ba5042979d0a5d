"""meta.git server-side hooks, split so each starts fast (docs/approvals.md "Hooks").

``controller.hook`` is the entry point the installed scripts exec; it imports
only the module its hook needs:

- ``updates``: the hook's stdin (``<old> <new> <ref>`` lines) and the ref names it judges.
- ``pre_receive``: the all-or-nothing ref check; tag decisions are judged with
  two ``git`` commands (no pygit2), and only a push that moves ``main`` loads
  ``main_check`` (pygit2, the manifest schema) to validate the new tree.
- ``post_receive``: the poke, ``POST /poke`` on host.sock over a raw unix
  socket (stdlib only: no pygit2, no http.client).
"""
