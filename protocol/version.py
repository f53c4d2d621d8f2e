"""The installed edgeloop version, for Status messages, checkpoints and ``edgeloop --version``.

It lives on the lowest floor so that ``agent`` and ``trainer`` need not import
the ``edgeloop`` command package to learn it.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    SOFTWARE_VERSION = _version("edgeloop")
except PackageNotFoundError:  # running from a source tree that is not installed
    SOFTWARE_VERSION = "0.0.0+src"
