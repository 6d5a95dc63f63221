"""S3 and DynamoDB operations shared by the driver, the handler and the silo agent."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Optional

import urllib3
from absl import logging
from botocore.exceptions import BotoCoreError, ClientError

from fedsim.aws import protocol
from fedsim.aws.config import StackConfig
from fedsim.core import op_allowlist, serialization

__all__ = ["Store", "ObjectExistsError", "ObjectAbsentError", "AccessDeniedError", "TransientStoreError",
           "MAX_COMPUTATION_BYTES", "MAX_JSON_BYTES"]

MAX_COMPUTATION_BYTES = 2**31  # a serialized computation larger than this is not downloaded
MAX_JSON_BYTES = 16 * 2**20  # nor a manifest larger than this
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)  # on top of boto3's own retries: a burst that outlives them


class ObjectExistsError(RuntimeError):
    """A write would have overwritten an existing object (earlier rounds are never rewritten)."""


class ObjectAbsentError(LookupError):
    """A definite answer: the object is not there (404)."""


class AccessDeniedError(PermissionError):
    """A definite answer: this principal may not read or write it (403)."""


class TransientStoreError(RuntimeError):
    """AWS failed in an ordinary way (throttling, 5xx, a cut body, a lost connection) past every
    retry: not an answer about the object. Callers let it propagate so the work is redone later."""


_ABSENT = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AccessDeniedException"}
_DEFINITE_WRITE = {"PreconditionFailed", "ConditionalRequestConflict", "ConditionalCheckFailedException"}


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _is_transient(error: BaseException) -> bool:
    """Throttling, 5xx, timeouts, connection and body errors: worth trying again."""
    if isinstance(error, ClientError):
        code = _code(error)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in _ABSENT | _DENIED | _DEFINITE_WRITE:
            return False
        return status >= 500 or status == 429 or "Throttl" in code or code in (
            "SlowDown", "RequestTimeout", "RequestLimitExceeded", "ProvisionedThroughputExceededException",
            "InternalError", "InternalServerError", "ServiceUnavailable", "TransactionConflictException")
    return isinstance(error, (BotoCoreError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def retrying(operation: Callable[[], Any], what: str) -> Any:
    """Runs `operation`, trying again with backoff while AWS fails transiently; then raises
    `TransientStoreError` naming `what`. Definite answers pass through at once."""
    for delay in RETRY_DELAYS + (None,):
        try:
            return operation()
        except Exception as error:  # noqa: BLE001 - sorted below: transient or definite
            if not _is_transient(error):
                raise
            if delay is None:
                raise TransientStoreError(f"{what}: AWS kept failing ({type(error).__name__}: {error})") from error
            logging.vlog(1, "%s: transient %s, trying again in %.1f s", what, type(error).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class Store:
    """The bucket and the table of one stack, with the small vocabulary the protocol needs."""

    def __init__(self, config: StackConfig, allowed_ops: op_allowlist.OpAllowlist = op_allowlist.DEFAULT_OP_ALLOWLIST):
        self.config = config
        self.allowed_ops = allowed_ops
        self.s3 = config.client("s3")
        self.dynamodb = config.client("dynamodb")
        self._computations: dict = {}
        self._lock = threading.Lock()

    # objects -------------------------------------------------------------------------------

    def _where(self, key: str) -> str:
        return f"s3://{self.config.bucket}/{key}"

    def put_new(self, key: str, data: bytes, sha256: Optional[str] = None, metadata: Optional[dict] = None) -> str:
        """Writes `key` only if it does not exist (with `metadata` beside its sha256); returns the data's sha256.

        Idempotent: when the object is there with the same sha256 (this write, applied by S3 but
        its answer lost, or the same bytes written by another), the write has succeeded.

        Raises:
          ObjectExistsError: another object, with other content, is there.
          TransientStoreError: AWS kept failing.
        """
        digest = sha256 or protocol.sha256(data)

        def put() -> None:
            self.s3.put_object(Bucket=self.config.bucket, Key=key, Body=data, IfNoneMatch="*",
                               Metadata={**(metadata or {}), "sha256": digest})

        try:
            retrying(put, f"writing {self._where(key)}")
        except ClientError as error:
            if _code(error) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
            if self.version_of(key).get("sha256") != digest:
                raise ObjectExistsError(f"{self._where(key)} already exists with other content; it is never overwritten") from None
        return digest

    def get(self, key: str, max_bytes: Optional[int] = None) -> tuple:
        """`(data, sha256 recorded in the object's metadata)`; refuses objects over `max_bytes`.

        A throttled, failed or cut read is tried again (a body shorter than its length is cut).

        Raises:
          ObjectAbsentError: the object is not there.
          AccessDeniedError: this principal may not read it.
          protocol.InvalidValueError: it is over `max_bytes`.
          TransientStoreError: AWS kept failing.
        """
        def read() -> tuple:
            response = self.s3.get_object(Bucket=self.config.bucket, Key=key)
            size = int(response.get("ContentLength", -1))
            if max_bytes is not None and size > max_bytes:
                response["Body"].close()
                raise protocol.InvalidValueError(f"{self._where(key)} is {size} bytes, over the limit of {max_bytes}")
            data = response["Body"].read()
            if size >= 0 and len(data) != size:
                raise ConnectionError(f"the body of {self._where(key)} was cut at {len(data)} of {size} bytes")
            return data, response.get("Metadata", {}).get("sha256")

        if max_bytes is not None:  # refused from the head, before any of the body is read
            size = self._head(key)["ContentLength"]
            if size > max_bytes:
                raise protocol.InvalidValueError(f"{self._where(key)} is {size} bytes, over the limit of {max_bytes}")
        return self._definite(read, f"reading {self._where(key)}", key)

    def _head(self, key: str) -> dict:
        return self._definite(lambda: self.s3.head_object(Bucket=self.config.bucket, Key=key), f"looking up {self._where(key)}", key)

    def _definite(self, operation: Callable[[], Any], what: str, key: str) -> Any:
        """`operation`, retried while transient, with 404 and 403 as `ObjectAbsentError` / `AccessDeniedError`."""
        try:
            return retrying(operation, what)
        except ClientError as error:
            code = _code(error)
            if code in _ABSENT:
                raise ObjectAbsentError(f"{self._where(key)} does not exist") from None
            if code in _DENIED:
                raise AccessDeniedError(f"{self._where(key)}: access denied") from None
            raise

    def get_checked(self, key: str, expected_sha256: Optional[str] = None, max_bytes: Optional[int] = None) -> bytes:
        data, recorded = self.get(key, max_bytes)
        expected = expected_sha256 or recorded
        actual = protocol.sha256(data)
        if expected is None or actual != expected:
            raise protocol.InvalidValueError(f"s3://{self.config.bucket}/{key}: checksum mismatch (expected {expected}, got {actual})")
        return data

    def version_of(self, key: str) -> dict:
        """`{"version_id", "sha256"}` of an object as stored (the bucket is versioned)."""
        head = self._head(key)
        return {"version_id": head.get("VersionId"), "sha256": head.get("Metadata", {}).get("sha256")}

    def exists(self, key: str) -> bool:
        """Whether `key` is there: True or False are definite answers.

        Raises:
          AccessDeniedError: this principal may not look (not the same as absent).
          TransientStoreError: AWS kept failing.
        """
        try:
            self._head(key)
            return True
        except ObjectAbsentError:
            return False

    def put_computation(self, computation: Any) -> dict:
        """Uploads a serialized computation under its content hash (once); returns its reference."""
        data = serialization.serialize_computation(computation)
        digest = protocol.sha256(data)
        key = protocol.computation_key(digest)
        if not self.exists(key):
            try:
                self.put_new(key, data, digest)
            except ObjectExistsError:
                pass  # uploaded concurrently: same bytes
        return {"key": key, "sha256": digest}

    def get_computation(self, reference: dict) -> Any:
        """The deserialized computation, cached by content hash for the life of this process.

        The bytes are checked against the hash and deserialized with this store's op allowlist.
        """
        digest = reference["sha256"]
        with self._lock:
            cached = self._computations.get(digest)
        if cached is None:
            data = self.get_checked(reference["key"], digest, max_bytes=MAX_COMPUTATION_BYTES)
            cached = serialization.deserialize_computation(data, allowed_ops=self.allowed_ops)
            with self._lock:
                self._computations[digest] = cached
        return cached

    def get_json(self, key: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
        """A JSON document (a manifest), size-bounded before it is read and checksum-verified."""
        data = self.get_checked(key, max_bytes=max_bytes)
        try:
            return json.loads(data)
        except ValueError as error:
            raise protocol.InvalidValueError(f"s3://{self.config.bucket}/{key} is not valid JSON: {error}") from None

    # records -------------------------------------------------------------------------------

    def get_item(self, key: dict) -> Optional[dict]:
        response = retrying(lambda: self.dynamodb.get_item(TableName=self.config.table, Key=_marshal(key), ConsistentRead=True),
                            f"reading item {key}")
        return _unmarshal(response["Item"]) if "Item" in response else None

    def _conditional(self, write: Any, key: dict, applied: Callable[[Optional[dict]], bool], **request: Any) -> bool:
        """Runs a conditional write; False (nothing written) when its condition does not hold.

        Idempotent: a write retried after AWS applied it (its answer lost) fails its own
        condition; when the item now shows what this write set (`applied(item)`), it succeeded.
        """
        try:
            retrying(lambda: write(**request, ReturnValuesOnConditionCheckFailure="ALL_OLD"), f"writing item {key}")
            return True
        except ClientError as error:
            if _code(error) != "ConditionalCheckFailedException":
                raise
            # boto3 resends a request whose answer was lost, so even a first call may meet its own
            # write. The item that stopped it comes with the error (a silo may not read the table).
            if "Item" in error.response:
                return applied(_unmarshal(error.response["Item"]))
            try:
                return applied(self.get_item(key))
            except ClientError:
                return False

    def _update(self, key: dict, applied: Callable[[Optional[dict]], bool], **request: Any) -> bool:
        return self._conditional(self.dynamodb.update_item, key, applied, TableName=self.config.table, Key=_marshal(key), **request)

    def put_item_if_absent(self, item: dict) -> bool:
        """False when an item with the same key exists (a duplicate); nothing is overwritten.
        A retried put that finds the item it wrote itself succeeds."""
        key = {"pk": item["pk"], "sk": item["sk"]}
        return self._conditional(self.dynamodb.put_item, key, lambda found: found == _native(_plain(item)),
                                 TableName=self.config.table, Item=_marshal(item), ConditionExpression="attribute_not_exists(pk)")

    def transition(self, key: dict, attribute: str, expected: Optional[str], new: str, **values: Any) -> bool:
        """Sets `attribute` from `expected` (None: absent) to `new` atomically; False if it was not `expected`."""
        names = {"#a": attribute}
        expression_values = {":new": new}
        sets = ["#a = :new"]
        for index, (name, value) in enumerate(values.items()):
            names[f"#v{index}"] = name
            expression_values[f":v{index}"] = value
            sets.append(f"#v{index} = :v{index}")
        if expected is None:
            condition = "attribute_exists(pk) AND attribute_not_exists(#a)"
        else:
            condition = "#a = :expected"
            expression_values[":expected"] = expected
        wrote = {attribute: new, **values}

        def applied(item: Optional[dict]) -> bool:
            return item is not None and all(item.get(k) == _native(_plain(v)) for k, v in wrote.items())

        return self._update(key, applied, UpdateExpression="SET " + ", ".join(sets), ConditionExpression=condition,
                            ExpressionAttributeNames=names, ExpressionAttributeValues=_marshal(expression_values))

    def claim(self, key: dict, now: float, lease_seconds: float, owner: str = "") -> bool:
        """Claims an open round for aggregation, or takes over a claim whose lease has expired
        (the handler that held it died); False if the round is not claimable now.

        `owner` (unique per claimant) is written with the claim, so a retried claim whose first
        attempt was applied finds its own name and succeeds.
        """
        until = now + lease_seconds
        return self._update(
            key,
            lambda item: item is not None and item.get("status") == "aggregating" and item.get("owner") == owner,
            UpdateExpression="SET #s = :aggregating, lease_until = :until, #o = :owner",
            ConditionExpression="#s = :open OR (#s = :aggregating AND lease_until < :now)",
            ExpressionAttributeNames={"#s": "status", "#o": "owner"},
            ExpressionAttributeValues=_marshal({":aggregating": "aggregating", ":open": "open", ":now": now, ":until": until,
                                                ":owner": owner}),
        )

    def renew(self, key: dict, owner: str, now: float, lease_seconds: float) -> bool:
        """Extends the lease of a claim this owner holds; False if the claim is no longer its own."""
        until = now + lease_seconds
        return self._update(
            key,
            lambda item: item is not None and item.get("owner") == owner and float(item.get("lease_until", 0)) >= until,
            UpdateExpression="SET lease_until = :until",
            ConditionExpression="#s = :aggregating AND #o = :owner",
            ExpressionAttributeNames={"#s": "status", "#o": "owner"},
            ExpressionAttributeValues=_marshal({":aggregating": "aggregating", ":owner": owner, ":until": until}),
        )

    def update_claimed(self, key: dict, owner: str, status: str = "aggregating", **values: Any) -> bool:
        """Sets `values` (and `status`) on an item `owner` holds a claim on; False if the claim is
        no longer its own. Idempotent: a retried write that finds its own values succeeded.

        Args:
            key: the claimed item.
            owner: the claimant's id (as given to `claim`).
            status: the status to leave (`"aggregating"` keeps the claim; `"open"` releases it).
            **values: the attributes to set.

        Returns:
            Whether the write holds.
        """
        names = {"#s": "status", "#o": "owner"}
        expression_values = {":aggregating": "aggregating", ":owner": owner, ":status": status}
        sets = ["#s = :status"]
        for index, (name, value) in enumerate(values.items()):
            names[f"#v{index}"] = name
            expression_values[f":v{index}"] = value
            sets.append(f"#v{index} = :v{index}")
        wrote = {"status": status, **values}

        def applied(item: Optional[dict]) -> bool:
            return (item is not None and item.get("owner") == owner
                    and all(item.get(k) == _native(_plain(v)) for k, v in wrote.items()))

        return self._update(key, applied, UpdateExpression="SET " + ", ".join(sets),
                            ConditionExpression="#s = :aggregating AND #o = :owner",
                            ExpressionAttributeNames=names, ExpressionAttributeValues=_marshal(expression_values))

    def _query_all(self, **request: Any) -> list:
        """Every item a query matches, across all its pages."""
        items, start = [], None
        while True:
            page = {"ExclusiveStartKey": start} if start else {}
            response = retrying(lambda: self.dynamodb.query(TableName=self.config.table, **request, **page), "querying the table")
            items.extend(_unmarshal(item) for item in response.get("Items", []))
            start = response.get("LastEvaluatedKey")
            if not start:
                return items

    def query_partition(self, partition: str) -> list:
        """Every item of one partition key, strongly consistent."""
        return self._query_all(KeyConditionExpression="pk = :p", ConsistentRead=True, ExpressionAttributeValues={":p": {"S": partition}})

    def round_verdicts(self, run_id: str, step: str) -> dict:
        """silo -> the server's verdict item for that silo's result in the round."""
        return {item["sk"]: item for item in self.query_partition(protocol.verdict_partition(run_id, step))}

    def round_results(self, run_id: str, step: str) -> list:
        """Every silo record of a round (the by_round index: eventually consistent; the verdicts are not)."""
        return self.by_round_key(protocol.round_key(run_id, step))

    def by_round_key(self, round_key: str) -> list:
        """Every silo item filed under `round_key` in the by_round index."""
        return self._query_all(IndexName="by_round", KeyConditionExpression="round_key = :r",
                               ExpressionAttributeValues={":r": {"S": round_key}})


def _marshal(item: dict) -> dict:
    from boto3.dynamodb.types import TypeSerializer

    serializer = TypeSerializer()
    return {k: serializer.serialize(_plain(v)) for k, v in item.items()}


def _plain(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _unmarshal(item: dict) -> dict:
    from boto3.dynamodb.types import TypeDeserializer

    deserializer = TypeDeserializer()
    return {k: _native(deserializer.deserialize(v)) for k, v in item.items()}


def _native(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _native(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_native(v) for v in value]
    return value


def unmarshal_image(image: dict) -> dict:
    """A DynamoDB stream record's NewImage as plain Python."""
    return _unmarshal(image)
