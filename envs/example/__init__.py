"""A tiny tool-use env (``hero_gym/Lookup-v0``): the reference for writing your own env."""

from .lookup import LookupEnv

__all__ = ["LookupEnv"]
