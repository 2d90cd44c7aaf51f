"""The clinic admin's status page, served by the health server at `/`.

`samples`: the lag and backlog readings the daemon takes each minute (and prunes);
`queries`: what the page reads, through deferred readers; `charts`: the server-side SVG;
`page`: the Starlette route, its authentication and the Jinja2 template.
"""
