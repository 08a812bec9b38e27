"""SQLAlchemy models and the document store (update log, compaction, snapshots).

Never imports ``app`` or ``crdt``: it stores bytes and knows nothing about Yjs.
"""
