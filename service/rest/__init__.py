"""The REST transport: routes, body reading, codecs, middleware and the one error-to-status table."""
