"""Backends run an algorithm's single definition: ``reference`` tensor by tensor."""
