"""The ``kubernetes`` runtime: agents as pods (docs/kubernetes.md).

Modules, each with one job: ``settings`` (the config section, pure), ``names`` (object
names, labels, annotations), ``render`` (the objects of one agent, pure), ``observe``
(phases from listed objects, pure), ``api`` (the typed door to the API server: the only
module that imports the client library), ``driver`` (``KubernetesDriver``: the I/O).
Nothing here is imported by this ``__init__``, so the config can use ``settings``
without loading a Kubernetes client.
"""
