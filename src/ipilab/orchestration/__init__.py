"""Runs put together from what a user gives: one run configuration for every command that simulates, and the
closed-loop replay (a trace's calls simulated again). reproduce/ and sweep/ are built on the same layer."""
