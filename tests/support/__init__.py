"""Helpers the tests share: data, events, stores and real worker processes. Not test modules."""
