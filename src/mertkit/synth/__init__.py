"""Offline music rendered from MIDI: benchmark suites and pre-training corpora."""
