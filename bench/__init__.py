"""Benchmark harness for tornadose: compares the package in this repository
against the original tornadose 0.4.1 from PyPI.

Modules:

* :mod:`bench.venvs`  -- creates the reference virtual environment.
* :mod:`bench.server` -- a pub/sub server process (one contender, one transport).
* :mod:`bench.client` -- a raw-socket load client that counts received frames.
* :mod:`bench.burst`  -- the burst benchmark: server CPU per delivered message.
"""
