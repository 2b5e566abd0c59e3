"""ioasids: a user-space emulation of the "IOASID extensions for guest SVA" (V4) series.

The model (``ioasidsd.model``) is pure Python without I/O: the IOASID core, the ``ioasids``
cgroup controller and, beside them, the simulated VT-d unit. The daemon, the FUSE face
(``cgroupfs``), the user-API socket and the CLI are thin layers over those objects.
"""

__version__ = "0.1.0"
