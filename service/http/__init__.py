"""The REST API: the app factory, the routes, middlewares, errors and OpenAPI."""
