"""Tests of the model (``ioasidsd/model/``): numbered behaviours, knobs, formats, properties."""
