"""pixelgov's applications: the `pixelgov` command line (`pixelgov.cli`) and the HTTP gateway
with its dashboard (`pixelgov.gateway`). Both are skins over the `ledger` library: they parse,
call it and present; neither holds a rule, a price or a money movement the other lacks."""
