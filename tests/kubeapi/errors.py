"""API errors and the Status bodies the real kube-apiserver sends for them.

Every failing request ends as an ApiError; the server turns it into a `kind: Status` body whose
shape follows the recorded transcripts (fixtures 08, 09, 10): which keys `details` has, whether
`details.kind` is the resource plural or the Kind, where `group` appears.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Cause:
    """One entry of `details.causes`: reason (FieldValueInvalid, ...), message and field path."""

    reason: str
    message: str
    field: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"reason": self.reason, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out

    def summary(self) -> str:
        """The cause as it appears in the aggregated `message` of an Invalid Status."""
        return f"{self.field}: {self.message}" if self.field else self.message


@dataclass
class ApiError(Exception):
    """A request that fails with a Status body. `headers` are extra response headers."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = None
    status_metadata: dict[str, Any] = field(default_factory=dict)
    headers: Sequence[tuple[str, str]] = ()
    text_body: str | None = None  # plain-text answers (unknown group/version 404)
    warnings: Sequence[str] = ()  # Warning headers still sent with the error (fixture 10/7)

    def __post_init__(self) -> None:
        super().__init__(f"{self.code} {self.reason}: {self.message}")

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": dict(self.status_metadata),
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(name: str | None, group: str, kind: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if name is not None:
        out["name"] = name
    if group:
        out["group"] = group
    out["kind"] = kind
    out.update(extra)
    return out


def qualified(resource: str, group: str) -> str:
    """`leases.coordination.k8s.io`, or just `services` for the core group."""
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{qualified(resource, group)} "{name}" not found', _details(name, group, resource)
    )


def already_exists(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{qualified(resource, group)} "{name}" already exists', _details(name, group, resource)
    )


def conflict_modified(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        _details(name, group, resource),
    )


def conflict_uid(kind: str, group: str, name: str, wanted: str, actual: str) -> ApiError:
    # Fixture 08/10: this one names the Kind, not the plural.
    what = f"{kind}.{group}" if group else kind
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {what} "{name}": the UID in the precondition ({wanted}) does not match '
        f"the UID in record ({actual}). The object might have been deleted and then recreated",
        _details(name, group, kind),
    )


def conflict_rv_precondition(kind: str, group: str, name: str, wanted: str, actual: str) -> ApiError:
    what = f"{kind}.{group}" if group else kind
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {what} "{name}": the ResourceVersion in the precondition ({wanted}) '
        f"does not match the ResourceVersion in record ({actual}). The object might have been modified",
        _details(name, group, kind),
    )


def invalid(kind: str, group: str, name: str, causes: Sequence[Cause]) -> ApiError:
    """422 Invalid: `details.kind` is the Kind (fixture 08/11..15, 09/7, 10/7)."""
    what = f"{kind}.{group}" if group else kind
    if len(causes) == 1:
        summary = causes[0].summary()
    else:
        summary = "[" + ", ".join(c.summary() for c in causes) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{what} "{name}" is invalid: {summary}',
        _details(name, group, kind, causes=[c.to_dict() for c in causes]),
    )


def invalid_options(kind: str, causes: Sequence[Cause]) -> ApiError:
    """422 on request options (PatchOptions, ListOptions): group meta.k8s.io, no name."""
    summary = causes[0].summary() if len(causes) == 1 else "[" + ", ".join(c.summary() for c in causes) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind}.meta.k8s.io "" is invalid: {summary}',
        {"group": "meta.k8s.io", "kind": kind, "causes": [c.to_dict() for c in causes]},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def forbidden(message: str, details: Mapping[str, Any]) -> ApiError:
    return ApiError(403, "Forbidden", message, dict(details), headers=(("X-Content-Type-Options", "nosniff"),))


def unsupported_media_type() -> ApiError:
    return ApiError(415, "UnsupportedMediaType", "415: Unsupported Media Type", {})


def unsupported_patch_type(accepted: Sequence[str]) -> ApiError:
    # Fixture 10/11: strategic merge patch on a custom resource; no details at all.
    return ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: " + ", ".join(accepted),
    )


def method_not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {})


def resource_not_found() -> ApiError:
    """Unknown resource in a known group/version (fixture 08/26)."""
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def page_not_found() -> ApiError:
    """Unknown group/version: plain text, not a Status (fixture 08/27)."""
    return ApiError(
        404,
        "NotFound",
        "404 page not found",
        text_body="404 page not found\n",
        headers=(("X-Content-Type-Options", "nosniff"),),
    )


def expired_list() -> ApiError:
    return ApiError(410, "Expired", "The resourceVersion for the provided list is too old.")


def expired_continue(new_token: str) -> ApiError:
    return ApiError(
        410,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. You can start a new list "
        "without the continue parameter, or use the continue token in this response to retrieve the remainder of the "
        "results. Continuing with the provided token results in an inconsistent list - objects that were created, "
        "modified, or deleted between the time the first chunk was returned and now may show up in the list.",
        status_metadata={"continue": new_token},
    )


def too_large_resource_version(requested: int, current: int) -> ApiError:
    return ApiError(
        504,
        "Timeout",
        f"Timeout: Too large resource version: {requested}, current: {current}",
        {
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
    )


def internal_error(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}", {"causes": [{"message": message}]})
