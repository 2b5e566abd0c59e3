"""The daemon ``ioasidsd run``: configuration, durable state, process tracking, the control API,
release agents, sd_notify, and the wiring of them all around one ``System`` (``app.py``)."""
