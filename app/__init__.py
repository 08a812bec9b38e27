"""The service: app factory, settings, auth, WebSocket endpoints, REST, telemetry, CLI.

The composition root: the only package that imports both ``crdt`` and ``storage``.
"""
