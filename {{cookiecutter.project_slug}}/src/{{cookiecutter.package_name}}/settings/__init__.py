"""Configuration, read once from the environment (12-factor).

Every field maps to an upper-case environment variable of the same name; units are in the names
(`_s` seconds, `_bytes`). Nothing here holds a secret's value: `DATABASE_URL` and
`MIGRATION_DATABASE_URL` come from the environment (Kubernetes Secrets in production) and are never
logged. Invalid values stop the process at start-up with one line per bad variable
(`load_settings`), never a traceback.

fields.py holds `Settings`, one field per variable; checks.py the checks between them (the request
deadline, the connection budget, authentication); database_url.py the database URLs' driver and
parameters; load.py the start-up that reads them.
"""

from {{ cookiecutter.package_name }}.settings.checks import SUPERUSER_RESERVED_CONNECTIONS
from {{ cookiecutter.package_name }}.settings.database_url import to_async_url
from {{ cookiecutter.package_name }}.settings.fields import Settings
from {{ cookiecutter.package_name }}.settings.load import load_settings

__all__ = ["SUPERUSER_RESERVED_CONNECTIONS", "Settings", "load_settings", "to_async_url"]
