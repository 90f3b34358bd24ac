"""The Tether server: gRPC handlers, domain logic, data layer, migrations, config and CLI."""
