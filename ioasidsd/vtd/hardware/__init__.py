"""The simulated VT-d hardware: what a remapping unit is and does on its own (registers,
memory-resident tables, caches, the invalidation and page request queues, virtual commands, DMA
translation and fault recording). Software reaches it only through register writes and the
structures it builds in simulated memory; nothing here imports the driver."""
