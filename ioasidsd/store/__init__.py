"""The durable state: the model in SQLite, with an append-only journal in front of it.

- ``state``: ``Store``, which makes every change ``System`` reports durable before the face
  answers, and rebuilds the model at start;
- ``journal``: the journal's files (segments, records, recovery);
- ``fold``: journal records and their folding into the database;
- ``idmap``: the store's memory of which set each IOASID was written in.

See ``docs/daemon.md`` (Durable state).
"""
