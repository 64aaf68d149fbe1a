"""The served model refuses bad requests by name and cannot be asked for unbounded memory."""

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
    ({"n": 1, "clas": 2}, "unknown request keys ['clas']"),
    ({}, "empty request"),
    (pd.DataFrame(columns=["n"]), "empty request"),
    (pd.DataFrame(columns=["clas"]), "unknown request keys ['clas']"),
    (np.array([1, 2, 3]), "expected one request"),
    ("n=2", "expected one request"),
    ({"n": np.array(2.5)}, "'n' must be an integer, got 2.5"),
    ({"n": "x" * 10**6}, "characters)"),
])
def test_every_bad_field_is_refused_by_name(request_, key):
    with pytest.raises(ValueError) as err:
        parse_request(request_)
    assert key in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 300


def test_good_requests_defaults_and_dataframes():
    assert parse_request({"seed": 2}) == {"n": 1, "class": 0, "seed": 2}
    assert parse_request({"n": np.array(3), "class": np.array(["mild"])}) == {"n": 3, "class": "mild", "seed": 0}  # REST "inputs"
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
    for bad in ("ten", "-5", "0", "2.5"):  # these used to become 10 000 silently
        monkeypatch.setenv("BRAINSYNTH_MAX_IMAGES", bad)
        with pytest.raises(ValueError, match=f"BRAINSYNTH_MAX_IMAGES='{bad}' must be a positive whole number"):
            parse_request({"n": 1})


def test_the_rest_server_refuses_bad_requests_by_name(tmp_path, monkeypatch):
    """Over REST on a real `mlflow models serve`: a misspelt key, a list, a string, a
    fractional n and an empty request are 400s whose message names the field; a good one gives images."""
    import json
    import os
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    import mlflow
    from helpers import repo_config

    from brainsynth.checkpoint import save_model_file
    from brainsynth.cluster import free_port
    from brainsynth.model.vaegan import Decoder, Encoder
    from brainsynth.serving import log_generator

    cfg = repo_config({"data.image_size": 16, "model.latent_dim": 4, "model.base_channels": 4, "model.max_channels": 8,
                       "model.cbam_res": [], "model.self_attention_res": []})
    model_file = tmp_path / "model.pt"
    save_model_file(model_file, cfg.model, 16, 3, ["healthy", "mild", "moderate"], Encoder(cfg.model, 16, 3), Decoder(cfg.model, 16, 3))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serve")
    with mlflow.start_run():
        model_uri = log_generator(model_file)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], env={**os.environ, "MLFLOW_TRACKING_URI": uri,
                                                                        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"},
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"), start_new_session=True)

    def post(body):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow models serve did not start"
                time.sleep(0.5)
        status, body = post({"dataframe_records": [{"n": 2, "class": "mild", "seed": 1}]})
        assert status == 200 and len(body["predictions"]) == 2
        for request_, named in [({"dataframe_records": [{"n": 1, "clas": 2}]}, "unknown request keys ['clas']"),
                                ({"inputs": {"n": 1, "clas": 2}}, "unknown request keys ['clas']"),
                                ({"inputs": [1, 2, 3]}, "expected one request"),
                                ({"inputs": "two images"}, "expected one request"),
                                ({"inputs": {"n": 2.5}}, "'n' must be an integer, got 2.5"),
                                ({"dataframe_records": []}, "empty request")]:
            status, body = post(request_)
            assert status == 400 and named in body["message"], (request_, status, body)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
