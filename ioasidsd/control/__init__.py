"""The control API: the daemon's administrative socket (``RUNTIME_DIR/control.sock``).

- ``protocol``: the wire format (JSON lines) and the socket's name;
- ``server``: ``ControlServer``, serving verbs to local clients within their connection caps;
- ``client``: ``ControlClient`` and ``ControlError``, for ``ioasidctl`` and scripts;
- ``verbs``: the verbs, plain functions of the running service, the request and the caller;
- ``visibility``: the one rule for what a caller other than root may see of a process.
"""
