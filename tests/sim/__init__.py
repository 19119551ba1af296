"""Deterministic simulator for the hactl Raft core: see sim.py for the model and checker.py for the invariants.

    python -m tests.sim --seeds 10000      # many seeds (3 and 5 nodes alternate)
    python -m tests.sim --seed 42 -v       # replay one, printing the trace
"""
from .checker import InvariantViolation
from .sim import Sim, run_seed

__all__ = ["InvariantViolation", "Sim", "run_seed"]
