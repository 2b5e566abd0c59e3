"""The Linux-like VT-d driver over the simulated hardware and the IOASID core: per-unit
bring-up, queued invalidation and PASID entries (``iommu``), binding records (``svm``), the
facade that boots, binds and listens for FREE (``vtd_driver``), the bindings rebuilt after a
restart (``restore``) and the system built from the daemon's configuration (``config``)."""
