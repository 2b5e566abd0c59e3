"""Command-line faces: ``ioasidsd`` (the daemon) and ``ioasidctl`` (the admin CLI)."""
