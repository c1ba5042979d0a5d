"""hyperhive controller: reconcile loop, runtime drivers, meta repo, broker, sockets, dashboard."""

__version__ = "0.1.0"
