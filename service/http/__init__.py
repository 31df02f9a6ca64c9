"""The HTTP face: the app and its lifespan, routes, schemas, request and connection limits.

The top of the service: may import every other package through ``service.runtime``.
"""
