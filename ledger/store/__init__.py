"""Persistence: the tables (`models`), the engines and their transactions (`db`), the governor's
raw per-dialect SQL (`hotpath`), the reads (`queries`) and the one definition of what each
status counts as held and spent (`spend`). Uses neither `policy`, `forward` nor `reports`."""
