"""forgetless against other continual-learning libraries (``python -m benchmarks.peers.NAME``).

The Avalanche scripts run in Avalanche's own venv; see ``benchmarks/peers/README.md``.
"""
