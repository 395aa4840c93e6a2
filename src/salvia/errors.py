"""Every error Salvia raises on purpose, each carrying SageMaker's wire code.

    SalviaError
    ├── ValidationException        the generic 400 (bad input, missing resource for most families)
    ├── SerializationException     the body is not the JSON the protocol promises
    ├── ResourceNotFound           modeled "not found" (Experiments, Images, Feature Groups, ...)
    ├── ResourceInUse              the resource is busy or still referenced
    ├── ResourceLimitExceeded
    ├── ConflictException
    ├── ThrottlingException
    ├── UnknownOperationException  an X-Amz-Target that no service model knows
    ├── NotImplementedOperation    in the model, not in Salvia yet (HTTP 501)
    ├── IncompleteSignature        a malformed Authorization header
    ├── InternalFailure            a bug of ours; logged with its traceback, answered as 500
    ├── ResourceNotFoundException  CloudWatch Logs' "not found" (a missing log group or stream)
    ├── InvalidParameterException  CloudWatch Logs' bad input (its ValidationException)
    ├── ObjectNotFoundException    Application Auto Scaling's "not found" (a target or policy)
    └── InvalidNextTokenException  Application Auto Scaling's refused NextToken

The HTTP status of each code is decided per protocol in `salvia.api.errors`; nothing below `api/`
knows about HTTP. Storage layers translate driver errors into these before they escape.
"""

from __future__ import annotations


class SalviaError(Exception):
    """Base of all deliberate errors; `code` is the wire `__type`."""

    code = "InternalFailure"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationException(SalviaError):
    code = "ValidationException"


class SerializationException(SalviaError):
    code = "SerializationException"


class ResourceNotFound(SalviaError):
    code = "ResourceNotFound"


class ResourceInUse(SalviaError):
    code = "ResourceInUse"


class ResourceLimitExceeded(SalviaError):
    code = "ResourceLimitExceeded"


class ConflictException(SalviaError):
    code = "ConflictException"


class ThrottlingException(SalviaError):
    code = "ThrottlingException"


class UnknownOperationException(SalviaError):
    code = "UnknownOperationException"


class NotImplementedOperation(SalviaError):
    """An operation of SageMaker's model that Salvia has not built yet: never a fake success."""

    code = "NotImplementedException"

    def __init__(self, operation: str, service: str = "SageMaker", detail: str = "") -> None:
        super().__init__(
            detail or f"{service} operation {operation} is not implemented by Salvia yet."
        )
        self.operation = operation


class IncompleteSignature(SalviaError):
    code = "IncompleteSignatureException"


class InternalFailure(SalviaError):
    code = "InternalFailure"


class AlreadyExists(SalviaError):
    """Raised by stores on a duplicate key; each resource family rewords it the SageMaker way."""

    code = "ValidationException"


class ResourceNotFoundException(SalviaError):
    """The "not found" of CloudWatch Logs, spelt as that service spells it (SageMaker's differs)."""

    code = "ResourceNotFoundException"


class InvalidParameterException(SalviaError):
    """CloudWatch Logs' answer to input it cannot use, where SageMaker says ValidationException."""

    code = "InvalidParameterException"


class ObjectNotFoundException(SalviaError):
    """Application Auto Scaling's "not found": no such scalable target or scaling policy."""

    code = "ObjectNotFoundException"


class InvalidNextTokenException(SalviaError):
    """Application Auto Scaling's answer to a NextToken it did not issue for this request."""

    code = "InvalidNextTokenException"


class NoSuchEntity(SalviaError):
    """IAM's "not found": no such user, group, role, policy or access key."""

    code = "NoSuchEntity"


class EntityAlreadyExists(SalviaError):
    """IAM's duplicate name."""

    code = "EntityAlreadyExists"


class MalformedPolicyDocument(SalviaError):
    """A policy document IAM's language does not accept."""

    code = "MalformedPolicyDocument"


class DeleteConflict(SalviaError):
    """IAM refuses to delete an entity that still has keys, members or attachments."""

    code = "DeleteConflict"


class InvalidInput(SalviaError):
    """IAM's and STS's generic bad input."""

    code = "InvalidInput"


class PasswordPolicyViolation(SalviaError):
    """IAM refuses a console password that its password policy does not accept."""

    code = "PasswordPolicyViolation"


class AccessDenied(SalviaError):
    """A request that the caller's policies do not allow (STS and IAM say AccessDenied)."""

    code = "AccessDenied"
