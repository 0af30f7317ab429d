"""The service: HTTP app, routers, settings, stores (core/), builder, CLI."""
