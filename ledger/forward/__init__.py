"""Forwarding: a governed request's way to the upstream and back — quoting as users give requests
(with the image probe), the FAL client, the runner, settlement from the answer, downloads."""
