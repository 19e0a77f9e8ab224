"""What every posmesh service needs: settings, database, Redis, tokens, tenant context,
interceptors, errors, telemetry. Nothing service-specific lives here."""
