"""Fleet operations on the server: commands to agents and signed configuration bundles per group.

``service.FleetService`` (owned by trainer.server.service.Service when MQTT is on), ``commands.Commander``,
``bundles.Bundles``, ``records`` (the store tables of migration 0006), ``routes.api_router`` (the API) and
``cli`` (``edgeloop agents``, over the HTTP API).
"""
