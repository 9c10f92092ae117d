"""A tiny tool-use env (``hero_gym/Lookup-v0``): the reference for writing your own env."""

from hero_gym.envs.example.lookup import LookupEnv

__all__ = ["LookupEnv"]
