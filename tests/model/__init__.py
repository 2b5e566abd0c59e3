"""Tests of the pure model (``ioasidsd/model/``): spec behaviours, knobs, formats, properties."""
