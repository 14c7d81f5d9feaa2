"""The compiled engine: the reference simulator's loop and kernel model as a numba state machine.

`ipilab.sim.run.simulate(..., engine="fast")` runs it; it produces the same events and results as the
reference engine (sim/engine.py, sim/machine.py, kernel/*.py) for the configurations it covers
(`unsupported` says which it does not). tests/test_fast_engine.py holds the two to that.
"""
