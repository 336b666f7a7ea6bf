"""Bookkeeping shared by every optimizer: the base class, the algorithm spec, checks, wrappers."""
