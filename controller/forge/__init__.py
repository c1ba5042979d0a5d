"""The hive forge (Forgejo) next to the controller: docs/forge.md.

- ``client``: the REST calls (stdlib HTTP; Forgejo's OpenAPI spec is the reference);
- ``notify``: pure: a notification's reason, its one-line summary, its idempotency key;
- ``hive``: per agent: user + token (``forge-token`` in its state), notification pump,
  repo-watch cleaning, revocation after a purge;
- ``worker``: the thread that runs ``hive`` for the swarm, and the deploy hook;
- ``setup``: builds it all from the controller config (``forge:`` section).
"""
