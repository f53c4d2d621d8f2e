"""edgeloop: edge active learning. The packages are ``agent`` (edge),
``trainer`` (central) and ``protocol`` (shared, the lowest floor); this one
holds only the ``edgeloop`` command, the local broker launcher and the demo.
Nothing below it imports it."""

from protocol.version import SOFTWARE_VERSION as __version__

__all__ = ["__version__"]
