"""The local emulator's TransactWriteItems (broker/local/moto_patches.py) keeps DynamoDB's
all-or-nothing semantics while copying only the items it touches."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from broker.adapters.aws import client


@pytest.fixture
def table(moto_url: str) -> str:
    name = f"tx-{uuid.uuid4().hex[:8]}"
    client("dynamodb").create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def put(table: str, pk: str, **extra: Any) -> dict[str, Any]:
    item = {"pk": {"S": pk}, "sk": {"S": "A"}, **{k: {"S": v} for k, v in extra.items()}}
    return {"Put": {"TableName": table, "Item": item}}


def keys(table: str) -> list[str]:
    return sorted(i["pk"]["S"] for i in client("dynamodb").scan(TableName=table)["Items"])


def test_all_conditions_pass_then_every_write_lands(table: str) -> None:
    # GIVEN an empty table / WHEN two puts and an update in one transaction / THEN all applied
    ddb = client("dynamodb")
    ddb.put_item(TableName=table, Item={"pk": {"S": "c"}, "sk": {"S": "A"}, "n": {"N": "1"}})
    ddb.transact_write_items(
        TransactItems=[
            put(table, "a"),
            put(table, "b"),
            {
                "Update": {
                    "TableName": table,
                    "Key": {"pk": {"S": "c"}, "sk": {"S": "A"}},
                    "UpdateExpression": "ADD n :one",
                    "ConditionExpression": "n < :limit",
                    "ExpressionAttributeValues": {":one": {"N": "1"}, ":limit": {"N": "5"}},
                }
            },
        ]
    )
    assert keys(table) == ["a", "b", "c"]
    item = ddb.get_item(TableName=table, Key={"pk": {"S": "c"}, "sk": {"S": "A"}})["Item"]
    assert item["n"] == {"N": "2"}


def test_one_failed_condition_cancels_everything_with_reasons_in_order(table: str) -> None:
    # GIVEN an existing item / WHEN a transaction puts a new item and re-creates the existing one
    ddb = client("dynamodb")
    ddb.put_item(TableName=table, Item={"pk": {"S": "old"}, "sk": {"S": "A"}, "v": {"S": "1"}})
    guarded = put(table, "old", v="2")
    guarded["Put"]["ConditionExpression"] = "attribute_not_exists(pk)"
    guarded["Put"]["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
    with pytest.raises(ClientError) as caught:
        ddb.transact_write_items(TransactItems=[put(table, "new"), guarded])
    # THEN nothing was written, and the reasons line up with the items (old image included)
    assert keys(table) == ["old"]
    reasons = caught.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "ConditionalCheckFailed"]
    assert reasons[1]["Item"]["v"] == {"S": "1"}


def test_a_rejected_step_rolls_back_the_steps_before_it(table: str) -> None:
    # GIVEN an existing item / WHEN a valid put is followed by an invalid update expression
    ddb = client("dynamodb")
    ddb.put_item(TableName=table, Item={"pk": {"S": "kept"}, "sk": {"S": "A"}, "v": {"S": "1"}})
    with pytest.raises(ClientError) as caught:
        ddb.transact_write_items(
            TransactItems=[
                put(table, "kept", v="overwritten"),
                put(table, "fresh"),
                {
                    "Update": {
                        "TableName": table,
                        "Key": {"pk": {"S": "other"}, "sk": {"S": "A"}},
                        "UpdateExpression": "SET v = :undefined",
                        "ExpressionAttributeValues": {":v": {"S": "x"}},
                    }
                },
            ]
        )
    # THEN a validation error, and the table is exactly as before
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert keys(table) == ["kept"]
    item = ddb.get_item(TableName=table, Key={"pk": {"S": "kept"}, "sk": {"S": "A"}})["Item"]
    assert item["v"] == {"S": "1"}


def test_two_operations_on_one_item_are_rejected(table: str) -> None:
    # GIVEN / WHEN the same key twice in one transaction / THEN ValidationException, nothing written
    with pytest.raises(ClientError) as caught:
        client("dynamodb").transact_write_items(
            TransactItems=[put(table, "x"), put(table, "x", v="2")]
        )
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert keys(table) == []


def test_an_item_over_the_size_limit_is_still_refused(table: str) -> None:
    # GIVEN an item of ~410 KB (moto's limit is 405,000 bytes; DynamoDB's 400 KB)
    # WHEN put / THEN ValidationException, as before the linear size patch
    with pytest.raises(ClientError) as caught:
        client("dynamodb").put_item(
            TableName=table,
            Item={"pk": {"S": "big"}, "sk": {"S": "A"}, "blob": {"S": "x" * 410_000}},
        )
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "size" in caught.value.response["Error"]["Message"].lower()
    assert keys(table) == []
