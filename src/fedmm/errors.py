"""User-facing errors.

Anything a user can cause (a bad path, a bad option, broken data) raises `FedmmError` with one line that names the
fix. The CLI prints it as `error: ...` and exits 2, with no traceback; every other exception is a bug and keeps its
traceback.
"""


class FedmmError(Exception):
    """An error the user can fix; its message is one line that says how."""


class SiteRefusal(FedmmError):
    """What a site sends back instead of an update: a fixed `code` and a message fedmm wrote, never an exception's
    text (which can hold the site's paths, file contents or environment). The server records it as that client's
    failure; the site's own log has the full story."""

    CODES = {
        "bad_request": "the request is malformed",
        "interpolation": "a setting holds ${...}",
        "plugin": "a plugin the site does not allow",
        "site_owned": "a path or folder option, which only the site sets",
        "not_allowed": "a component or model source outside the site's policy",
        "limit": "over one of the site's limits",
        "no_client_eval": "the site does not take part in client-side evaluation",
        "partition_id": "the site's partition-id does not fit the experiment",
        "site_error": "the site failed; its log has the details",
    }
    MAX_MESSAGE = 300

    def __init__(self, code: str, message: str):
        self.code = code if code in self.CODES else "site_error"
        self.message = message
        super().__init__(f"site refused ({self.code}): {message}")

    def to_wire(self) -> dict:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_wire(cls, data: object) -> "SiteRefusal":
        """A refusal as a server takes it from the network: an unknown code becomes site_error, the message is cut
        to MAX_MESSAGE printable characters (it goes into metrics.jsonl)."""
        code = data.get("code") if isinstance(data, dict) else None
        message = data.get("message") if isinstance(data, dict) else None
        text = "".join(c for c in str(message or "") if c.isprintable())[: cls.MAX_MESSAGE]
        return cls(code if isinstance(code, str) else "site_error", text or cls.CODES["site_error"])
