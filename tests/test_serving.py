"""The served model refuses bad requests by name and cannot be asked for unbounded memory (#13 item 2)."""

import numpy as np
import pandas as pd
import pytest

from brainsynth.serving import DEFAULT_MAX_IMAGES, parse_request


@pytest.mark.parametrize("request_, key", [
    ({"n": -1}, "'n' = -1 is outside 0..10000"),
    ({"n": 10**7}, "'n' = 10000000 is outside 0..10000"),
    ({"n": None}, "'n' must be an integer, got None"),
    ({"n": 2.9}, "'n' must be an integer, got 2.9"),
    ({"n": "4"}, "'n' must be an integer"),
    ({"n": True}, "'n' must be an integer, got True"),
    ({"seed": "x"}, "'seed' must be an integer"),
    ({"seed": 2**70}, "'seed' = 1180591620717411303424 is outside 0..4294967295"),
    ({"seed": -1}, "'seed' = -1 is outside"),
    ({"class": 1.7}, "'class' must be an integer, got 1.7"),
    ({"class": True}, "'class' must be an integer, got True"),
    ({"colour": 1}, "unknown request keys ['colour']"),
])
def test_every_bad_field_is_refused_by_name(request_, key):
    with pytest.raises(ValueError) as err:
        parse_request(request_)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_good_requests_defaults_and_dataframes():
    assert parse_request({}) == {"n": 1, "class": 0, "seed": 0}
    assert parse_request({"n": 0, "class": "mild", "seed": 3}) == {"n": 0, "class": "mild", "seed": 3}
    assert parse_request({"n": np.int64(5), "class": np.int32(2)})["n"] == 5
    assert parse_request(pd.DataFrame([{"n": 4, "class": 1, "seed": 7}])) == {"n": 4, "class": 1, "seed": 7}
    with pytest.raises(ValueError, match="one request per call: got 2 rows"):
        parse_request(pd.DataFrame([{"n": 1}, {"n": 2}]))


def test_the_cap_is_configurable(monkeypatch):
    monkeypatch.setenv("BRAINSYNTH_MAX_IMAGES", "50")
    assert parse_request({"n": 50})["n"] == 50
    with pytest.raises(ValueError, match="outside 0..50"):
        parse_request({"n": 51})
    monkeypatch.delenv("BRAINSYNTH_MAX_IMAGES")
    assert parse_request({"n": DEFAULT_MAX_IMAGES})["n"] == DEFAULT_MAX_IMAGES
    for bad in ("ten", "-5", "0", "2.5"):  # #25: these used to become 10 000 silently
        monkeypatch.setenv("BRAINSYNTH_MAX_IMAGES", bad)
        with pytest.raises(ValueError, match=f"BRAINSYNTH_MAX_IMAGES='{bad}' must be a positive whole number"):
            parse_request({"n": 1})
