"""pixelgov's stateful half: ledger models, the governor, reports, upstream client, CLI and gateway.

Importing this package imports nothing heavy; each module pulls in what it needs.
"""
