"""Configs and reference data that ship with visbench, read through ``importlib.resources``.

``visbench.config.config_path("study/default.yaml")`` finds a file here in any install (editable or wheel).
"""
