"""Durable state: the metadata store (SQL) and the object store (fsspec)."""
