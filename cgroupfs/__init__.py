"""cgroupfs: the ``ioasids`` hierarchy as a cgroup-v1 file system over FUSE.

``mount(system, mountpoint)`` serves a ``System`` at ``mountpoint`` until ``unmount()``. The
modules, from the inside out: ``pidlists`` (what ``cgroup.procs`` and ``tasks`` list), ``files``
(the file table: names, modes, readers and writers over ``System``), ``operations`` (the FUSE
operations and their errnos), ``mount`` (mounting, unmounting, dead mounts).
"""

from cgroupfs.mount import CgroupMount, force_unmount, fuse_unavailable, mount, stale_mount

__all__ = ["CgroupMount", "force_unmount", "fuse_unavailable", "mount", "stale_mount"]
