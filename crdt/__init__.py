"""The documents: rooms, y-websocket sync, canvas schema and JSON<->Yjs mapping.

Never imports ``app`` or ``storage``; it declares the store it needs in ``crdt.store``.
"""
