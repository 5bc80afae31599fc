"""Bad bundle manifests: random bytes, and the shipped manifest with one field mutated and
then properly signed (so verification gets past the signature): verify() and the agent's
load_bundle() raise BundleError and nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_ingest import _paths
from test_fuzz_messages import JSON

from agent.inference import load_bundle
from foreshock import bundle as fb
from foreshock.demo import default_bundle
from foreshock.errors import BundleError

KEY = fb.generate_signing_key()
NAMES = st.sampled_from(["detector.onnx", "", ".", "..", "../manifest.json", "/etc/hostname",
                         "a\x00b", "signature", "manifest.json", "sub/dir.onnx", "x" * 200])


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    src, _ = default_bundle()
    dst = tmp_path_factory.mktemp("bundle") / "b"
    shutil.copytree(src, dst)
    return dst, json.loads((src / fb.MANIFEST).read_text())


@st.composite
def mutated_manifests(draw: st.DrawFn, original: dict[str, Any]) -> bytes:
    data = json.loads(json.dumps(original))
    path = draw(st.sampled_from(_paths(data)))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    how = draw(st.sampled_from(["drop", "set", "file"]))
    if how == "file":
        data["files"][draw(NAMES)] = draw(st.text(max_size=64) | JSON)
    elif how == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON)
    return json.dumps(data).encode()


def _check(bundle: Path, raw: bytes, original: dict[str, Any], signed: bool) -> None:
    (bundle / fb.MANIFEST).write_bytes(raw)
    (bundle / fb.SIGNATURE).write_text("")
    if signed:
        fb.sign(bundle, KEY)
    pub = fb.public_key_pem(KEY.public_key())
    try:
        fb.verify(bundle, [KEY.public_key()])
    except BundleError:
        pass
    try:
        load_bundle(bundle, [pub], str(original["feature_spec_hash"]))
    except BundleError:
        pass


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_signed_manifest_raises_bundle_error_only(
        shipped: tuple[Path, dict[str, Any]], data: st.DataObject) -> None:
    bundle, original = shipped
    _check(bundle, data.draw(mutated_manifests(original)), original, signed=True)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=400) | JSON.map(lambda o: json.dumps(o).encode()),
       signed=st.booleans())
def test_random_manifest_bytes_raise_bundle_error_only(
        shipped: tuple[Path, dict[str, Any]], raw: bytes, signed: bool) -> None:
    bundle, original = shipped
    _check(bundle, raw, original, signed)


def test_the_unmutated_copy_still_loads(shipped: tuple[Path, dict[str, Any]]) -> None:
    bundle, original = shipped
    _check(bundle, json.dumps(original).encode(), original, signed=True)
    loaded = load_bundle(bundle, [fb.public_key_pem(KEY.public_key())],
                         str(original["feature_spec_hash"]))
    assert loaded.model_info["name"] == original["name"]


def test_overlong_file_name_in_signed_manifest_raises_bundle_error(
        shipped: tuple[Path, dict[str, Any]]) -> None:
    bundle, original = shipped
    data = json.loads(json.dumps(original))
    data["files"]["x" * 300] = "0" * 64
    (bundle / fb.MANIFEST).write_text(json.dumps(data))
    fb.sign(bundle, KEY)
    with pytest.raises(BundleError):
        fb.verify(bundle, [KEY.public_key()])


@pytest.mark.parametrize("input_name", [True, 7, "no_such_input"])
def test_bad_detector_input_name_in_signed_manifest_raises_bundle_error(
        shipped: tuple[Path, dict[str, Any]], input_name: object) -> None:
    bundle, original = shipped
    data = json.loads(json.dumps(original))
    data["models"]["detector"]["input"] = input_name
    (bundle / fb.MANIFEST).write_text(json.dumps(data))
    fb.sign(bundle, KEY)
    with pytest.raises(BundleError, match="input"):
        load_bundle(bundle, [fb.public_key_pem(KEY.public_key())],
                    str(original["feature_spec_hash"]))
