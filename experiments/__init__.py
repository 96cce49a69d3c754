"""Experiment scripts: thin runners over fnn and its peers."""
