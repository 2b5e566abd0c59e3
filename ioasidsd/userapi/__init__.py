"""The ``/dev/ioasid`` socket face: ``protocol`` (framing), ``server`` (the socket), ``client``.

The device itself (open, ioctl, release) is the model's ``ioasidsd.model.ioasid_device``, its
header ``ioasidsd.model.ioasid_uapi``; this package only carries it over a unix socket.
"""
