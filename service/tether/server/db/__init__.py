"""The data layer: schema, engines, migrations and the repository modules."""
