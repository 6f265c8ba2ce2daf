"""Policy: spending rules and their periods, the governor (check, authorize, settle, release),
administration of agents and rules, and each rule's current usage. Built on `ledger.store`."""
