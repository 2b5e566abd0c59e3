"""A simulated Intel VT-d unit (hardware side): registers, memory-resident tables, queues."""
