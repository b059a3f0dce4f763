"""Bytes ⇄ objects for every stored object type; no I/O, no crypto."""
