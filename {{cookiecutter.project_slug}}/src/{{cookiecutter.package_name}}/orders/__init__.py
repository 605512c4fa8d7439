"""The example domain: orders. A template for your own: router, schemas, models, service."""
