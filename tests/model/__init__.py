"""Tests of the pure model (``ioasidsd/model/``): numbered behaviours, knobs, formats, properties."""
