"""danna_sep.schema: the one JSON loader of training configs and bundle manifests."""

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple

import pytest

from danna_sep import schema
from danna_sep.errors import DannaSepError


@dataclass
class Inner:
    rate: float
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str
    inner: Inner
    items: List[Inner] = field(default_factory=list)
    pair: Tuple[float, float] = (0.0, 1.0)
    limit: Optional[int] = None
    weights: Dict[str, float] = field(default_factory=dict)
    free: Dict[str, Any] = field(default_factory=dict)
    flag: bool = False


@dataclass
class Open:
    OPEN_KEYS = True
    name: str


class MyError(DannaSepError):
    pass


def test_a_document_that_fits_is_built_with_its_types():
    data = {"name": "x", "inner": {"rate": 1}, "items": [{"rate": 2.5, "kind": "b"}], "pair": [1, 2],
            "limit": 3, "weights": {"a": 1}, "free": {"anything": [1, "two"]}, "flag": True}
    built = schema.from_json(Outer, data, "f.json")
    assert built == Outer("x", Inner(1.0), [Inner(2.5, "b")], (1.0, 2.0), 3, {"a": 1.0}, {"anything": [1, "two"]}, True)
    assert isinstance(built.inner.rate, float) and isinstance(built.pair, tuple)
    assert schema.to_json(built)["pair"] == [1.0, 2.0]  # tuples as lists, as JSON has them
    assert schema.from_json(Outer, schema.to_json(built), "f.json") == built
    assert schema.differences(built, Outer("x", Inner(1.0, "b"), limit=3)) == [
        "flag", "free.anything", "inner.kind", "items", "pair", "weights.a"]


@pytest.mark.parametrize("data,message", [
    ({"inner": {"rate": 1}}, "f.json: missing key name"),
    ({"name": "x", "inner": {"rate": 1}, "extra": 1},
     "f.json: unknown key extra (known in the top level: name, inner, items, pair, limit, weights, free, flag)"),
    ({"name": "x", "inner": {"rate": 1, "sped": 2}}, "f.json: unknown key inner.sped (known in inner: rate, kind)"),
    ({"name": "x", "inner": {"rate": "1"}}, 'f.json: inner.rate: expected number, got "1"'),
    ({"name": "x", "inner": {"rate": True}}, "f.json: inner.rate: expected number, got true"),
    ({"name": "x", "inner": {"rate": 1, "kind": "c"}}, 'f.json: inner.kind: expected "a" | "b", got "c"'),
    ({"name": "x", "inner": {"rate": 1}, "items": [{"rate": 1}, {"kind": "a"}]}, "f.json: missing key items[1].rate"),
    ({"name": "x", "inner": {"rate": 1}, "pair": [1]}, "f.json: pair: expected list of 2 numbers, got [1]"),
    ({"name": "x", "inner": {"rate": 1}, "limit": 2.5}, "f.json: limit: expected integer or null, got 2.5"),
    ({"name": "x", "inner": {"rate": 1}, "weights": {"a": None}}, "f.json: weights.a: expected number, got null"),
    ({"name": "x", "inner": {"rate": 1}, "flag": 1}, "f.json: flag: expected true/false, got 1"),
    ([1, 2], "f.json: expected a JSON object at the top level"),
])
def test_a_document_that_does_not_fit_is_one_line_naming_the_key(data, message):
    with pytest.raises(MyError) as caught:
        schema.from_json(Outer, data, "f.json", error=MyError)
    assert str(caught.value) == message


def test_open_dataclasses_leave_other_keys_to_their_writers():
    assert schema.from_json(Open, {"name": "x", "training": [1]}, "b.json") == Open("x")
    with pytest.raises(schema.SchemaError, match="missing key name"):
        schema.from_json(Open, {"training": [1]}, "b.json")


def test_read_json_names_the_file_and_the_place(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"a": 1,\n  "b": }')
    with pytest.raises(MyError, match=r"c.json: not valid JSON \(line 2, column 8: Expecting value\)"):
        schema.read_json(path, MyError)
    with pytest.raises(MyError, match="nope.json: no such config file"):
        schema.read_json(tmp_path / "nope.json", MyError, "config file")
    path.write_text(json.dumps({"a": [1]}))
    assert schema.read_json(path, MyError) == {"a": [1]}
