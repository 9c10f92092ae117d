"""Environments shipped with hero-gym (imported as ``hero_gym.envs``).

Each env lives in its own subpackage: ``example`` (Lookup, a tiny tool-use env for tests and
tutorials), ``tau_bench`` (retail, airline) and ``webshop`` (text, server, browser). Importing
this package imports no env: ``hero_gym.make`` loads them on demand.
"""
