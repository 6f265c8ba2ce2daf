"""The seed platform's own SDK, unmodified, against a real `pixelgov serve` over TLS (issue 18).

Runs the seed's Quick Example and Complete Example (`tests/sdk/*.mjs`) in Node with the pinned npm
packages `@sapiom/fetch@0.3.0` and `@sapiom/core@0.3.0`, which `.ci/run` installs outside the tree
and names in `PIXELGOV_SAPIOM_SDK` (their `node_modules`). Without them the tests skip locally,
saying why, and fail on CI. The SDK users' two settings are the environment the examples get:
`SAPIOM_BASE_URL=https://<gateway>/sapiom` and `SAPIOM_API_KEY` (an agent's key, or a service key
with the example's `agentName`); `NODE_EXTRA_CA_CERTS` trusts the test's self-signed certificate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import running_on_ci
from gateway_support import SERVER_FAL_KEY, self_signed_cert, serve_subprocess
from support import spec

from ledger import Ledger

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).parent / "sdk"
PINNED = {"@sapiom/fetch": "0.3.0", "@sapiom/core": "0.3.0"}


@pytest.fixture(scope="module")
def sdk() -> Path:
    """The installed SDK's node_modules (with the pinned versions), and node itself."""
    where = os.environ.get("PIXELGOV_SAPIOM_SDK")
    problem = None
    if shutil.which("node") is None:
        problem = "node is not installed"
    elif not where:
        problem = "PIXELGOV_SAPIOM_SDK is not set (.ci/run installs @sapiom/fetch@0.3.0 and sets it)"
    else:
        for package, version in PINNED.items():
            manifest = Path(where) / package / "package.json"
            found = json.loads(manifest.read_text())["version"] if manifest.exists() else None
            if found != version:
                problem = f"{package}@{version} is not installed in {where} (found {found})"
    if problem:
        if running_on_ci():
            pytest.fail(f"the seed SDK test cannot run: {problem}: CI requires it", pytrace=False)
        pytest.skip(problem)
    assert where is not None
    return Path(where)


@pytest.fixture
def tls(tmp_path: Path) -> tuple[str, str]:
    return self_signed_cert(tmp_path)


@pytest.fixture
def served(db_url: str, fake_fal: Any, tls: tuple[str, str]) -> Iterator[str]:
    with serve_subprocess(db_url, fake_fal.url, ssl=tls) as (url, _proc, _log):
        yield url


def node(sdk: Path, tmp_path: Path, script: str, url: str, key: str, cert: str) -> subprocess.CompletedProcess[str]:
    """Run one example as its users do: the script beside a node_modules holding the SDK."""
    work = tmp_path / "app"
    work.mkdir(exist_ok=True)
    if not (work / "node_modules").exists():
        (work / "node_modules").symlink_to(sdk, target_is_directory=True)
    shutil.copy(SCRIPTS / script, work / script)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "SAPIOM_API_KEY": key,
        "SAPIOM_BASE_URL": f"{url}/sapiom",
        "SERVICE_URL": url,
        "NODE_EXTRA_CA_CERTS": cert,
    }
    return subprocess.run(["node", script], cwd=work, env=env, capture_output=True, text=True, timeout=90, check=False)


def fal_posts(fake: Any) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST"]


@pytest.mark.parametrize("key_kind", ["agent", "service"])
def test_the_seed_examples_run_unchanged_through_the_gateway(
    sdk: Path, served: str, db_url: str, fake_fal: Any, tls: tuple[str, str], tmp_path: Path, key_kind: str
) -> None:
    with Ledger(db_url) as ledger:
        if key_kind == "agent":
            key = str(ledger.admin.create_agent("my-agent").api_key)
        else:
            key = str(ledger.admin.create_service_key("fleet").key)  # my-agent is created on first use

        quick = node(sdk, tmp_path, "quick_example.mjs", served, key, tls[0])
        assert quick.returncode == 0, quick.stderr
        assert quick.stdout.strip().startswith("http") and len(quick.stdout.split()) == 1, quick.stdout
        complete = node(sdk, tmp_path, "complete_example.mjs", served, key, tls[0])
        assert complete.returncode == 0, complete.stderr
        assert [u[:4] for u in complete.stdout.split()] == ["http", "http"], complete.stdout
        for done in (quick, complete):
            assert "[Sapiom]" not in done.stderr and "Error" not in done.stderr, done.stderr  # no failure logged

        txs = sorted(ledger.governor.transactions(), key=lambda t: t.id)
        bodies = [
            ("fal-ai/flux/dev", {"image_size": "landscape_4_3"}),
            ("fal-ai/flux/dev", {"image_size": "square_hd"}),
            ("fal-ai/flux/dev/image-to-image", {}),
        ]
        assert [t.endpoint for t in txs] == [e for e, _ in bodies]
        for tx, (endpoint, body) in zip(txs, bodies):
            assert tx.agent == "my-agent" and tx.status.value == "completed"
            assert tx.actual_cost == tx.estimated_cost == ledger.quote(endpoint, body).amount
        assert txs[0].actual_cost == Decimal("0.01185")  # the default flux/dev request, exactly

        pres = ledger.governor.preauthorizations(limit=10)
        assert len(pres) == 3 and all(p.transaction is not None for p in pres)
        assert {p.outcome for p in pres} == {"success"}  # the SDK's own complete arrived, without error

    posts = fal_posts(fake_fal)
    assert len(posts) == 3
    for sent in posts:
        assert {k.lower(): v for k, v in sent.headers.items()}["authorization"] == f"Key {SERVER_FAL_KEY}"
        assert key.encode() not in sent.raw  # the upstream saw the server's key only


@pytest.mark.parametrize("refusal", ["paused agent", "spent budget"])
def test_a_refusal_reaches_the_sdk_and_nothing_is_forwarded(
    sdk: Path, served: str, db_url: str, fake_fal: Any, tls: tuple[str, str], tmp_path: Path, refusal: str
) -> None:
    with Ledger(db_url) as ledger:
        key = str(ledger.admin.create_agent("my-agent").api_key)
        if refusal == "paused agent":
            ledger.admin.update_agent("my-agent", status="paused")
            expected = "error AuthorizationDeniedError"  # denied at the SDK's POST /transactions
        else:
            ledger.admin.create_rule(
                spec(name="tiny", type="spend-limit", limit="0.01", period="day", agent="my-agent")
            )
            expected = "status 402"  # room for no request of 0.01185: refused at the service call
        done = node(sdk, tmp_path, "denied.mjs", served, key, tls[0])
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == expected, (done.stdout, done.stderr)
        assert all(t.status.value == "denied" for t in ledger.governor.transactions())
    assert fal_posts(fake_fal) == []
