"""The one exception the protocol raises for bad input."""


class ProtocolError(ValueError):
    """A topic or payload that does not follow the edgeloop protocol.

    ``reason`` is a short machine-friendly slug (used as a counter label and a
    dead-letter reason); ``str(err)`` is the human explanation.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
