"""Deprecated alias of :mod:`vgm2p_fast.backends`, kept while ``policy`` still imports it."""
from .backends import *  # noqa: F403  (the whole public API, resolve/implementation included)
