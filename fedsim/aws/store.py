"""S3 and DynamoDB operations shared by the driver, the handler and the silo agent."""

from __future__ import annotations

import json
import threading
from typing import Any, Optional

from botocore.exceptions import ClientError

from fedsim.aws import protocol
from fedsim.aws.config import StackConfig
from fedsim.core import op_allowlist, serialization

__all__ = ["Store", "ObjectExistsError", "MAX_COMPUTATION_BYTES", "MAX_JSON_BYTES"]

MAX_COMPUTATION_BYTES = 2**31  # a serialized computation larger than this is not downloaded
MAX_JSON_BYTES = 16 * 2**20  # nor a manifest larger than this


class ObjectExistsError(RuntimeError):
    """A write would have overwritten an existing object (earlier rounds are never rewritten)."""


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

    def put_new(self, key: str, data: bytes, sha256: Optional[str] = None, metadata: Optional[dict] = None) -> str:
        """Writes `key` only if it does not exist (with `metadata` beside its sha256); returns the data's sha256."""
        digest = sha256 or protocol.sha256(data)
        try:
            self.s3.put_object(Bucket=self.config.bucket, Key=key, Body=data, IfNoneMatch="*",
                               Metadata={**(metadata or {}), "sha256": digest})
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise ObjectExistsError(f"s3://{self.config.bucket}/{key} already exists; it is never overwritten") from None
            raise
        return digest

    def get(self, key: str, max_bytes: Optional[int] = None) -> tuple:
        """`(data, sha256 recorded in the object's metadata)`; refuses objects over `max_bytes`."""
        if max_bytes is not None:
            size = self.s3.head_object(Bucket=self.config.bucket, Key=key)["ContentLength"]
            if size > max_bytes:
                raise protocol.InvalidValueError(f"s3://{self.config.bucket}/{key} is {size} bytes, over the limit of {max_bytes}")
        response = self.s3.get_object(Bucket=self.config.bucket, Key=key)
        return response["Body"].read(), response.get("Metadata", {}).get("sha256")

    def get_checked(self, key: str, expected_sha256: Optional[str] = None, max_bytes: Optional[int] = None) -> bytes:
        data, recorded = self.get(key, max_bytes)
        expected = expected_sha256 or recorded
        actual = protocol.sha256(data)
        if expected is None or actual != expected:
            raise protocol.InvalidValueError(f"s3://{self.config.bucket}/{key}: checksum mismatch (expected {expected}, got {actual})")
        return data

    def version_of(self, key: str) -> dict:
        """`{"version_id", "sha256"}` of an object as stored (the bucket is versioned)."""
        head = self.s3.head_object(Bucket=self.config.bucket, Key=key)
        return {"version_id": head.get("VersionId"), "sha256": head.get("Metadata", {}).get("sha256")}

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.config.bucket, Key=key)
            return True
        except ClientError:
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
        response = self.dynamodb.get_item(TableName=self.config.table, Key=_marshal(key), ConsistentRead=True)
        return _unmarshal(response["Item"]) if "Item" in response else None

    @staticmethod
    def _conditional(write: Any, **request: Any) -> bool:
        """Runs a conditional write; False (nothing written) when its condition does not hold."""
        try:
            write(**request)
            return True
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise

    def _update(self, key: dict, **request: Any) -> bool:
        return self._conditional(self.dynamodb.update_item, TableName=self.config.table, Key=_marshal(key), **request)

    def put_item_if_absent(self, item: dict) -> bool:
        """False when an item with the same key exists (a duplicate); nothing is overwritten."""
        return self._conditional(self.dynamodb.put_item, TableName=self.config.table, Item=_marshal(item),
                                 ConditionExpression="attribute_not_exists(pk)")

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
        return self._update(key, UpdateExpression="SET " + ", ".join(sets), ConditionExpression=condition,
                            ExpressionAttributeNames=names, ExpressionAttributeValues=_marshal(expression_values))

    def claim(self, key: dict, now: float, lease_seconds: float) -> bool:
        """Claims an open round for aggregation, or takes over a claim whose lease has expired
        (the handler that held it died); False if the round is not claimable now."""
        return self._update(
            key,
            UpdateExpression="SET #s = :aggregating, lease_until = :until",
            ConditionExpression="#s = :open OR (#s = :aggregating AND lease_until < :now)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_marshal({":aggregating": "aggregating", ":open": "open", ":now": now, ":until": now + lease_seconds}),
        )

    def _query_all(self, **request: Any) -> list:
        """Every item a query matches, across all its pages."""
        items, start = [], None
        while True:
            response = self.dynamodb.query(TableName=self.config.table, **request, **({"ExclusiveStartKey": start} if start else {}))
            items.extend(_unmarshal(item) for item in response.get("Items", []))
            start = response.get("LastEvaluatedKey")
            if not start:
                return items

    def query_partition(self, partition: str) -> list:
        """Every item of one partition key, strongly consistent."""
        return self._query_all(KeyConditionExpression="pk = :p", ConsistentRead=True, ExpressionAttributeValues={":p": {"S": partition}})

    def round_verdicts(self, run_id: str, round_num: int) -> dict:
        """silo -> the server's verdict item for that silo's result in the round."""
        return {item["sk"]: item for item in self.query_partition(protocol.verdict_partition(run_id, round_num))}

    def round_results(self, run_id: str, round_num: int) -> list:
        """Every silo record of a round (the by_round index: eventually consistent; the verdicts are not)."""
        return self._query_all(IndexName="by_round", KeyConditionExpression="round_key = :r",
                               ExpressionAttributeValues={":r": {"S": protocol.round_key(run_id, round_num)}})


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
