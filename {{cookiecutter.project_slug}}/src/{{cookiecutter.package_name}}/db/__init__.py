"""Persistence: the declarative base, the engine and the per-request session, migrations."""
