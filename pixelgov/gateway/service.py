"""The gateway's service layer: governed runs, queued runs, identities — no HTTP here.

One `Gateway` per worker process: it owns the worker's `Ledger`, its shared
`AsyncUpstream` (one httpx.AsyncClient, bounded pool) and a bounded pool of threads for
the ledger's short database transactions. Every money step is the library's
(`ledger.forward.runner`: `run_governed_async`, and for the queue its building blocks `begin`,
`conclude`, `conclude_failure`, `interrupted`), so the gateway and `pixelgov run` keep the
ledger right in the same ways.

Queue semantics (FAL's queue API): a submit authorizes (the hold) and answers at once; the
worker then forwards the request in a background task and settles it. Status polls only
read. A cancel releases the hold (`voided`) if this worker has not sent the request yet
(it waits for an upstream connection); a request already sent cannot be recalled and is
settled at its real cost (the cancel answers 400 with its status). A worker that stops
lets its queued runs finish for `shutdown_grace` seconds, then ends them as the runner
does for any interrupted run (`failed` if not sent, `unknown` if sent).
"""

from __future__ import annotations

from .identity import Identities
from .queue import QueuedRuns


class Gateway(Identities, QueuedRuns):
    """A worker's gateway: the ledger, the upstream, the thread pool, the queue, the metrics."""
