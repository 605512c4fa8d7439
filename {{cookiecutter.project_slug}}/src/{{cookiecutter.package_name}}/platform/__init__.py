"""The production standards, one module each. Nothing here imports a domain package."""
