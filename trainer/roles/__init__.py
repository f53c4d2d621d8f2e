"""Process roles: which parts of the central side one process runs (web server, collector, round worker).

Not people's roles (those are ``trainer.server.roles``). ``RolesConfig`` is the server's ``[roles]``
table; ``trainer.roles.cli`` holds ``edgeloop collector`` and ``edgeloop worker``.
"""

from .config import RolesConfig

__all__ = ["RolesConfig"]
