"""`spec.criteriaExpression` (cluster/operator/criteria.py): the part of CEL adx-mon's expressions
use, with CEL's meaning; CEL's errors where cel-go gives one; `CriteriaUnsupported` beyond it."""

from __future__ import annotations

import re

import pytest

from cluster.operator.criteria import CriteriaError, CriteriaUnsupported, evaluate, parse_labels

LABELS = {"region": "eastus", "environment": "prod", "cloud": "AzurePublicCloud"}


@pytest.mark.parametrize(("expression", "value"), [
    ("", True),  # adx-mon: empty means the resource is handled
    ("region == 'eastus'", True),
    ("region == 'westus'", False),
    ('region == "eastus"', True),
    ("region != 'eastus'", False),
    ("environment == 'prod' && region == 'eastus'", True),  # the example of adx-mon's field doc
    ("environment == 'prod' && region == 'westus'", False),
    ("environment == 'test' || region == 'eastus'", True),
    ("!(region == 'eastus')", False),
    ("!!(region == 'eastus')", True),
    ("region in ['westus', 'eastus']", True),
    ("region in ['westus']", False),
    ("region in []", False),
    ("cloud.startsWith('Azure')", True),
    ("cloud.endsWith('Cloud') && cloud.contains('Public')", True),
    ("cloud.contains('china')", False),
    ("'eastus' == region", True),
    ("true", True),
    ("false || region == 'eastus'", True),
    ("(region == 'eastus') == true", True),
    ("region == 'east\\'us'", False),
    ("  region  ==  'eastus'  ", True),
    ("region == 'EastUS'", False),  # case-sensitive, as adx-mon's code
    ("environment == 'prod' || environment == 'test' && region == 'westus'", True),  # && binds tighter
])
def test_expressions_have_cels_meaning(expression: str, value: bool) -> None:
    assert evaluate(expression, LABELS) is value


@pytest.mark.parametrize(("expression", "message"), [
    ("zone == 'a'", "undeclared reference to 'zone'"),  # a label the operator does not have
    ("region == true", "no matching overload"),
    ("region && true", "no matching overload"),
    ("!region", "no matching overload"),
    ("region", "not a bool"),
    ("'x' in region", "in"),
    ("region ==", "end of expression"),
    ("(region == 'eastus'", "expected ')'"),
    ("region == 'eastus')", "unexpected ')'"),
    ("region = 'eastus'", "syntax error"),
    ("region == 'eastus", "syntax error"),
    ("cloud.startsWith(true)", "no matching overload"),
    ("region == 'eastus' # a comment", "syntax error"),
])
def test_errors_are_errors(expression: str, message: str) -> None:
    with pytest.raises(CriteriaError, match=re.escape(message)) as raised:
        evaluate(expression, LABELS)
    assert not isinstance(raised.value, CriteriaUnsupported), raised.value
    assert raised.value.reason == "CriteriaExpressionError"


@pytest.mark.parametrize("expression", [
    "size(region) > 3",
    "region.matches('^east')",
    "region == 'eastus' ? true : false",
    "1 == 1",
    "has(region)",
    "region == r'eastus'",
    "region == '''eastus'''",
    "region == null",
    "region + 'x' == 'eastusx'",
    "[region] == ['eastus']",
    "region == '\\u0065astus'",
])
def test_what_is_not_implemented_says_so(expression: str) -> None:
    with pytest.raises(CriteriaUnsupported) as raised:
        evaluate(expression, LABELS)
    assert raised.value.reason == "CriteriaExpressionUnsupported"


def test_no_labels_means_every_name_is_undeclared() -> None:
    assert evaluate("", {}) is True
    with pytest.raises(CriteriaError, match="labels: none"):
        evaluate("region == 'eastus'", {})


def test_cluster_labels_as_adxmons_flag_takes_them() -> None:
    assert parse_labels(["region=eastus", "environment = prod"]) == {"region": "eastus", "environment": "prod"}
    assert parse_labels(["region=eastus,cloud=public"]) == {"region": "eastus", "cloud": "public"}
    assert parse_labels(["note=a=b"]) == {"note": "a=b"}
    assert parse_labels([]) == {}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_labels(["region"])
    with pytest.raises(ValueError, match="key is empty"):
        parse_labels([" =eastus"])
