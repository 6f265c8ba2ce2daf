"""Drop-in proof: the unmodified `fal_client` package, pointed at the gateway over TLS (a self-signed
certificate made by openssl), runs governed requests — `run` and `subscribe` (the queue API).

fal_client reads `FAL_RUN_HOST`/`FAL_QUEUE_RUN_HOST` when it is imported and always speaks
https, so each client runs in a subprocess with its own environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from gateway_support import SERVER_FAL_KEY, gateway_server, self_signed_cert
from support import spec

pytest.importorskip("fal_client")
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed for the certificate")

CLIENT = r"""
import json, sys
import fal_client

out = {}
try:
    run = fal_client.run("fal-ai/flux/dev", arguments={"prompt": "a red fox", "image_size": "square_hd"})
    out["run"] = run
    queued = fal_client.subscribe("fal-ai/flux/schnell", arguments={"prompt": "a blue fox"}, with_logs=True)
    out["subscribe"] = queued
    fal_client.run("fal-ai/flux/dev", arguments={"prompt": "one too many", "image_size": "square_hd"})
    out["over_budget"] = "not refused"
except fal_client.client.FalClientHTTPError as exc:
    out["error"] = {"status": exc.status_code, "message": str(exc), "type": exc.error_type}
print(json.dumps(out))
"""


def run_client(gateway_url: str, cert: str, key: str, tmp_path: Path) -> dict[str, Any]:
    host = gateway_url.removeprefix("https://")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "PIXELGOV_"))}
    env.update(
        FAL_RUN_HOST=host, FAL_QUEUE_RUN_HOST=f"{host}/queue", SSL_CERT_FILE=cert, FAL_KEY=key, HOME=str(tmp_path)
    )
    done = subprocess.run([sys.executable, "-c", CLIENT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_an_unmodified_fal_client_is_governed_through_the_gateway(db_url: str, fake_fal: Any, tmp_path: Path) -> None:
    cert, keyfile = self_signed_cert(tmp_path)
    with gateway_server(db_url, fake_fal.url, ssl=(cert, keyfile)) as gw:
        agent_key = gw.ledger.admin.create_agent("fal-bot").api_key
        # square_hd flux-dev: 1.05 MP × 0.015 = 0.01575; schnell landscape_4_3: 0.79 × 0.004 = 0.00316.
        gw.ledger.admin.create_rule(
            spec(name="fal-bot-daily", type="spend-limit", limit="0.02", period="day", agent="fal-bot")
        )
        out = run_client(gw.url, cert, agent_key, tmp_path)

        assert out["run"]["images"][0]["width"] == 1024 and out["run"]["images"][0]["height"] == 1024
        assert out["subscribe"]["images"][0]["width"] == 1024
        assert out["error"]["status"] == 402 and out["error"]["type"] == "denied"
        assert "fal-bot-daily" in out["error"]["message"]
        assert "over_budget" not in out

        txs = gw.ledger.governor.transactions(agent="fal-bot")
        by_status = sorted((t.endpoint, t.status.value, t.actual_cost) for t in txs)
        assert by_status == [
            ("fal-ai/flux/dev", "completed", Decimal("0.01575")),
            ("fal-ai/flux/dev", "denied", None),
            ("fal-ai/flux/schnell", "completed", Decimal("0.00316")),
        ]

    posts = [r for r in fake_fal.requests if r.method == "POST"]
    assert [p.path for p in posts] == ["fal-ai/flux/dev", "fal-ai/flux/schnell"]  # the denial sent nothing
    for post in posts:
        headers = {k.lower(): v for k, v in post.headers.items()}
        assert headers["authorization"] == f"Key {SERVER_FAL_KEY}"
        assert agent_key not in json.dumps(post.headers) and agent_key.encode() not in post.raw
