import json
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import load_file

from attributes.bank import Term, VectorBank
from attributes.errors import VectorError

NAMES = ["Smiling", "Male", "Young", "Eyeglasses", "5_o_Clock_Shadow"]
D = 8


def orthonormal_bank(metadata=None) -> tuple[VectorBank, dict[str, np.ndarray]]:
    """Five orthonormal float32 vectors in R^8, so expected sums are exact."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))
    basis = {n: q[:, i].astype(np.float32) for i, n in enumerate(NAMES)}
    return VectorBank(basis, metadata=metadata), basis


class FakeTensor:
    """Quacks like a torch tensor: .detach().cpu().numpy()."""

    def __init__(self, arr):
        self.arr = np.asarray(arr)

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.arr


# -- expressions -------------------------------------------------------------------------------

GRAMMAR = [
    ("Smiling", [(1.0, "Smiling", ())]),
    ("Smiling + 1.5", [(1.5, "Smiling", ())]),
    ("Smiling+1.5", [(1.5, "Smiling", ())]),
    ("Smiling - 1", [(-1.0, "Smiling", ())]),
    ("Smiling+1-0.5*Male", [(1.0, "Smiling", ()), (-0.5, "Male", ())]),
    ("Smiling - 0.5*Male", [(1.0, "Smiling", ()), (-0.5, "Male", ())]),
    ("-Smiling", [(-1.0, "Smiling", ())]),
    ("2*Smiling", [(2.0, "Smiling", ())]),
    ("Smiling*2", [(2.0, "Smiling", ())]),
    ("-1.5 * Eyeglasses + Male", [(-1.5, "Eyeglasses", ()), (1.0, "Male", ())]),
    ("Smiling@Male", [(1.0, "Smiling", ("Male",))]),
    ("Smiling@Male@Young", [(1.0, "Smiling", ("Male", "Young"))]),
    ("Smiling@(Male, Young)", [(1.0, "Smiling", ("Male", "Young"))]),
    ("Smiling@Male + 1.5", [(1.5, "Smiling", ("Male",))]),
    ("1e-1*Smiling + Male*2.5E1", [(0.1, "Smiling", ()), (25.0, "Male", ())]),
    ("5_o_Clock_Shadow + 1.5", [(1.5, "5_o_Clock_Shadow", ())]),
    ("5_o_Clock_Shadow-1e-1*Young", [(1.0, "5_o_Clock_Shadow", ()), (-0.1, "Young", ())]),
    ("Male + Smiling + 2 - Young", [(1.0, "Male", ()), (2.0, "Smiling", ()), (-1.0, "Young", ())]),
    ("Smiling + Smiling", [(1.0, "Smiling", ()), (1.0, "Smiling", ())]),
]


@pytest.mark.parametrize("expr, expected", GRAMMAR)
def test_expression_terms_and_vector(expr, expected):
    bank, basis = orthonormal_bank()
    assert bank.parse(expr) == [Term(c, n, cond) for c, n, cond in expected]
    # Orthonormal basis: conditions on other basis vectors remove nothing.
    want = sum(c * basis[n].astype(np.float64) for c, n, _ in expected)
    got = bank.vector(expr)
    assert got.dtype == np.float32 and got.shape == (D,)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(bank.vector(expr, scale=-2.0), -2.0 * want, atol=1e-6)


def test_condition_projects_out_the_condition():
    e = np.eye(4, dtype=np.float32)
    bank = VectorBank({"Smiling": e[0] + 0.5 * e[1] + 0.25 * e[2], "Male": e[1], "Young": e[2]})
    np.testing.assert_allclose(bank.vector("Smiling@Male"), e[0] + 0.25 * e[2], atol=1e-6)
    assert abs(float(bank.vector("Smiling@Male") @ bank["Male"])) < 1e-6
    np.testing.assert_allclose(bank.vector("Smiling@Male@Young"), e[0], atol=1e-6)
    np.testing.assert_allclose(bank.vector("2*Smiling@(Young, Male)"), 2 * e[0], atol=1e-6)


def test_several_conditions_remove_their_span_not_each_alone():
    rng = np.random.default_rng(1)
    smiling, male, young = rng.normal(size=(3, 6))
    bank = VectorBank({"Smiling": smiling, "Male": male, "Young": young})
    v = bank.vector("Smiling@(Male, Young)").astype(np.float64)
    assert abs(v @ male) < 1e-5 and abs(v @ young) < 1e-5
    # What remains is smiling minus its least-squares fit on (male, young).
    basis = np.stack([male, young], axis=1)
    want = smiling - basis @ np.linalg.lstsq(basis, smiling, rcond=None)[0]
    np.testing.assert_allclose(v, want, atol=1e-5)
    np.testing.assert_allclose(bank.vector("Smiling@Male@Young"), v, atol=1e-6)


def test_describe_is_canonical_and_parses_back():
    bank, _ = orthonormal_bank()
    expr = "Smiling@(Male) + 1.5 - 0.5*young + Young*0.25"
    assert bank.describe(expr) == "+1.5*Smiling@Male -0.25*Young"
    np.testing.assert_allclose(bank.vector(bank.describe(expr)), bank.vector(expr), atol=1e-6)
    assert bank.describe("-Smiling@Young@Male") == "-1*Smiling@Young@Male"


def test_lookup_is_case_insensitive():
    bank, basis = orthonormal_bank()
    assert "smiling" in bank and "SMILING" in bank and "Frowning" not in bank
    np.testing.assert_array_equal(bank["sMiLiNg"], basis["Smiling"])
    assert bank.parse("smiling@MALE") == [Term(1.0, "Smiling", ("Male",))]
    assert bank.names == NAMES and len(bank) == 5 and bank.dim == D
    assert bank.matrix.shape == (5, D) and bank.matrix.dtype == np.float32


def test_unknown_name_suggests_the_closest():
    bank, _ = orthonormal_bank()
    with pytest.raises(VectorError, match=r"unknown attribute 'Smilng': did you mean 'Smiling'\?"):
        bank["Smilng"]
    with pytest.raises(VectorError) as err:
        bank.parse("Male - Smilng")
    msg = str(err.value)
    assert "'Smilng' at position 7" in msg and "did you mean 'Smiling'?" in msg
    assert "known: Smiling, Male" in msg and "\n" not in msg


PARSE_ERRORS = [
    ("", "empty edit expression"),
    ("   ", "empty edit expression"),
    ("Smiling + * 2", "unexpected '*' at position 10: \"Smiling + ▸* 2\""),
    ("Smiling +", "nothing after '+' at position 8"),
    ("Smiling - 0.5*", "nothing after '*' at position 13"),
    ("Smiling@", "nothing after '@' at position 7"),
    ("Smiling@(Male, Young", "unclosed '(' at position 8"),
    ("Smiling@Male)", "unmatched ')' at position 12"),
    ("1.5", "the number 1.5 has no attribute at position 0"),
    ("1.5 + Smiling", "the number 1.5 has no attribute at position 0"),
    ("Smiling@Smiling", "'Smiling' cannot be conditioned on itself at position 8"),
    ("Smiling@(Male, smiling)", "'Smiling' cannot be conditioned on itself at position 15"),
    ("Smiling Male", "unexpected 'Male' at position 8"),
    ("Smiling*Male", "cannot multiply two attributes"),
    ("2*Smiling + 1.5", "the strength 1.5 does not follow a plain attribute name at position 12"),
    ("Smiling & Male", "unexpected character '&' at position 8"),
    ("Smiling@Male,Young", "unexpected ',' at position 12"),
    ("Smiling@()", "no condition before ')' at position 9"),
]


@pytest.mark.parametrize("expr, fragment", PARSE_ERRORS)
def test_parse_errors_say_where(expr, fragment):
    bank, _ = orthonormal_bank()
    with pytest.raises(VectorError) as err:
        bank.parse(expr)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_quoted_names_and_names_that_need_quotes():
    e = np.eye(3, dtype=np.float32)
    bank = VectorBank({"Wearing Hat": e[0], "eye-glasses": e[1], "Male": e[2]})
    assert bank.parse("'Wearing Hat' + 2 - 0.5*\"eye-glasses\"@Male") == [
        Term(2.0, "Wearing Hat", ()),
        Term(-0.5, "eye-glasses", ("Male",)),
    ]
    text = bank.describe("'wearing hat' - 'EYE-GLASSES'")
    assert text == "+1*'Wearing Hat' -1*'eye-glasses'"
    np.testing.assert_allclose(bank.vector(text), e[0] - e[1])


# -- construction ------------------------------------------------------------------------------


def test_bank_accepts_tensors_and_rejects_bad_vectors():
    bank = VectorBank({"A": FakeTensor([1.0, 2.0]), "B": [0.0, 1.0]})
    np.testing.assert_array_equal(bank["a"], np.array([1.0, 2.0], dtype=np.float32))
    with pytest.raises(VectorError, match="'B' has 3 dimensions but 'A' has 2"):
        VectorBank({"A": [1.0, 2.0], "B": [1.0, 2.0, 3.0]})
    with pytest.raises(VectorError, match="differ only in case"):
        VectorBank({"Male": [1.0], "MALE": [2.0]})
    with pytest.raises(VectorError, match="NaN"):
        VectorBank({"A": [np.nan, 1.0]})
    with pytest.raises(VectorError, match="non-empty"):
        VectorBank({})


def test_from_estimator_keeps_provenance():
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    est = SimpleNamespace(
        vectors_=vectors,
        names_=["Smiling", "Male"],
        counts_=np.array([[90, 10], [60, 40]], dtype=np.int64),
        norms_=np.linalg.norm(vectors, axis=1).astype(np.float32),
        method="balanced",
    )
    bank = VectorBank.from_estimator(est, label_source="celeba", model_hash="abc123")
    assert bank.names == ["Smiling", "Male"]
    np.testing.assert_array_equal(bank.matrix, vectors)
    meta = bank.metadata
    assert meta["method"] == "balanced" and meta["label_source"] == "celeba"
    assert meta["model_hash"] == "abc123"
    assert meta["counts"] == {"Smiling": [90, 10], "Male": [60, 40]}
    assert meta["norms"]["Male"] == pytest.approx(float(np.linalg.norm([3, 4, 5])), rel=1e-6)
    json.dumps(meta)  # JSON-safe: no numpy scalars left
    with pytest.raises(VectorError, match="not fitted"):
        VectorBank.from_estimator(SimpleNamespace(method="mean"))


def test_subset_and_with_vector_make_new_banks():
    bank, basis = orthonormal_bank(metadata={"counts": {n: [1, 2] for n in NAMES}})
    sub = bank.subset(["young", "Smiling"])
    assert sub.names == ["Young", "Smiling"]
    assert sub.metadata["counts"] == {"Young": [1, 2], "Smiling": [1, 2]}
    np.testing.assert_array_equal(sub["Young"], basis["Young"])
    new = bank.with_vector("male", np.ones(D))
    assert new.names == ["Smiling", "male", "Young", "Eyeglasses", "5_o_Clock_Shadow"]
    np.testing.assert_array_equal(new["Male"], np.ones(D, dtype=np.float32))
    assert "male" not in new.metadata["counts"] and "Male" not in new.metadata["counts"]
    np.testing.assert_array_equal(bank["Male"], basis["Male"])  # the original is unchanged
    assert bank.with_vector("Bald", np.zeros(D)).names[-1] == "Bald"


# -- files -------------------------------------------------------------------------------------


def test_save_load_round_trip_is_bit_identical(tmp_path):
    meta = {
        "method": "mean",
        "label_source": "celeba",
        "model_hash": "f00d",
        "counts": {n: [3, 4] for n in NAMES},
        "norms": {n: 1.0 for n in NAMES},
    }
    bank, _ = orthonormal_bank(metadata=meta)
    out = bank.save(tmp_path / "new" / "dir")
    loaded = VectorBank.load(out)
    assert loaded.names == bank.names
    assert loaded.matrix.tobytes() == bank.matrix.tobytes()
    assert loaded.metadata == meta
    info = json.loads((out / "vectors.json").read_text())
    assert info["format_version"] == 1 and info["dim"] == D and info["names"] == NAMES
    assert info["created"].endswith("Z") and isinstance(info["library_version"], str)
    tensors = load_file(str(out / "vectors.safetensors"))
    assert set(tensors) == set(NAMES) and all(t.dtype == np.float32 for t in tensors.values())
    assert sorted(p.name for p in out.iterdir()) == ["vectors.json", "vectors.safetensors"]
    bank.save(out)  # overwriting leaves no temporary files either
    assert sorted(p.name for p in out.iterdir()) == ["vectors.json", "vectors.safetensors"]


def test_load_truncated_safetensors_names_the_file(tmp_path):
    bank, _ = orthonormal_bank()
    bank.save(tmp_path)
    path = tmp_path / "vectors.safetensors"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(VectorError, match="vectors.safetensors is damaged or truncated"):
        VectorBank.load(tmp_path)


def test_load_bad_json_and_mismatched_names(tmp_path):
    bank, _ = orthonormal_bank()
    bank.save(tmp_path)
    info_path = tmp_path / "vectors.json"
    good = info_path.read_text()
    info_path.write_text(good[:20])
    with pytest.raises(VectorError, match=r"vectors.json is not valid JSON"):
        VectorBank.load(tmp_path)
    info = json.loads(good)
    info["names"][0] = "Frowning"
    info_path.write_text(json.dumps(info))
    with pytest.raises(VectorError, match=r"does not match .*missing \['Frowning'\]"):
        VectorBank.load(tmp_path)


def test_load_missing_folder_says_what_to_run(tmp_path):
    with pytest.raises(VectorError) as err:
        VectorBank.load(tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and "conceptvae vectors" in str(err.value)


def test_model_hash_mismatch(tmp_path):
    bank, _ = orthonormal_bank(metadata={"model_hash": "aaa111"})
    bank.save(tmp_path)
    assert VectorBank.load(tmp_path, model_hash="aaa111").names == NAMES
    with pytest.raises(VectorError) as err:
        VectorBank.load(tmp_path, model_hash="bbb222")
    assert str(err.value) == (
        f"vectors in {tmp_path} were made for another model (hash aaa111, this model bbb222): "
        "run `conceptvae vectors` for this model"
    )
    with pytest.raises(VectorError, match="made for another model"):
        bank.check_model("bbb222")
    bank.check_model("aaa111")
    with pytest.raises(VectorError, match="record no model hash"):
        orthonormal_bank()[0].check_model("aaa111")
