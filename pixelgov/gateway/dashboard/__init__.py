"""The browser dashboard under `/dashboard` (server-rendered Jinja2, static assets in the package).

Behind the admin token: a login form sets a signed session cookie (see `session`), every page
checks it and every form that writes carries a CSRF token (see `guard`). The pages (`pages`)
read the same library calls as `pixelgov report` and the admin commands; charts are SVG drawn
on the server (`svg`). Nothing is fetched from anywhere but this server.
"""

from __future__ import annotations

from fastapi import APIRouter

from .guard import DashboardRoute

router = APIRouter(prefix="/dashboard", include_in_schema=False, route_class=DashboardRoute)

from . import pages  # noqa: E402, F401 - registers the pages on the router
