"""edgeloop: edge active learning. The packages are ``agent`` (edge),
``trainer`` (central) and ``protocol`` (shared); this one holds only the
``edgeloop`` command and small helpers both sides use."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("edgeloop")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+src"
